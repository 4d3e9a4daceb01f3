"""spillover: an Envoy control plane for AI model serving."""

__version__ = "0.1.0"
