"""Planning: validated policies + decisions + what the sources know -> the IR of one gateway (pure)."""

from spillover.plan.planner import Planner, model_ir, needs_token, plan_gateway, uses_least_latency

__all__ = ["Planner", "model_ir", "needs_token", "plan_gateway", "uses_least_latency"]
