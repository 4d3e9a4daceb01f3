"""Translation stage: a pure function from the gateway IR (spillover.ir) to Envoy xDS resources, and the
Envoy bootstrap that points an Envoy at spillover."""

from spillover.translate.translator import SYSTEM_CA_BUNDLE, Resources, translate

__all__ = ["SYSTEM_CA_BUNDLE", "Resources", "translate"]
