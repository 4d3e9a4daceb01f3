"""Grafana dashboards over Envoy's per-model stats and spillover's own series, and `spillover report`.

The dashboards are generated (`python -m spillover.dashboards`) into the repository's `dashboards/`
directory from typed builders (Grafana's foundation SDK, a dev dependency) so that every panel uses the
same queries (`queries.py`) and names (spillover.names); the report draws an overflow episode from the
same queries. Importing this package imports neither the SDK nor matplotlib.
"""
