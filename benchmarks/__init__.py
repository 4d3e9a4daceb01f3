"""spillover benchmarks: xDS push fan-out, snapshot build, protobuf serialization.

Run with `python -m benchmarks` (the full run, `make bench`) or `python -m benchmarks --quick` (smoke run,
under a minute). Every figure is printed next to a baseline measured in the same run. Results are written
to `benchmarks/results/latest.md` and `latest.json`.
"""
