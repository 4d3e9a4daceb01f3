"""File mode: a directory of ModelDeployment YAML files, and secrets read from files."""
