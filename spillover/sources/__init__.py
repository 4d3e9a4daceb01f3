"""Everything spillover reads, each turned into typed state: policy files (`files`), the Kubernetes API
(`kube`), metrics and Envoy's view of endpoint health (`metrics`), OAuth2 tokens (`oauth`)."""
