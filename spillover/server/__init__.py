"""The xDS layer: resources, versioned snapshots per node group, and the gRPC ADS server.

It knows resources, versions, nodes and streams — never models or policies — so it can serve any
Envoy configuration (the same split as go-control-plane's pkg/cache and pkg/server).
"""
