"""The embedded default (`make run`) and the load generator that goes with it."""

from spillover.demo.load import run_load
from spillover.demo.run import DEMO_MODEL, run_demo

__all__ = ["DEMO_MODEL", "run_demo", "run_load"]
