{{/*
Object names are fixed (spillover, spillover-xds, spillover-gateway, ...), as in manifests/: the CRD
and the ClusterRoles are cluster-wide, so there is one installation per cluster.
Labels are those of manifests/ and nothing else, so that both render the same objects.
*/}}

{{- define "spillover.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{- define "spillover.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "spillover.xdsHost" -}}
{{- printf "spillover-xds.%s.svc.%s" (include "spillover.namespace" .) .Values.clusterDomain -}}
{{- end -}}

{{/* The DNS SAN of spillover's certificate the gateways check (and send as SNI). */}}
{{- define "spillover.serverName" -}}
{{- .Values.tls.serverName | default (printf "spillover-xds.%s.svc" (include "spillover.namespace" .)) -}}
{{- end -}}

{{/* The identity (URI SAN) of the gateways' client certificate, the one their admission rule admits. */}}
{{- define "spillover.gatewayIdentity" -}}
{{- .Values.tls.gatewayIdentity | default (printf "spiffe://%s/ns/%s/sa/spillover-gateway" .Values.clusterDomain (include "spillover.namespace" .)) -}}
{{- end -}}

{{/* The `spillover bootstrap` command whose output is the gateway's bootstrap.yaml (with TLS, `--output-dir DIR`
writes the ConfigMap's three files). */}}
{{- define "spillover.bootstrapCommand" -}}
{{- printf "spillover bootstrap --node-id spillover-gateway --cluster spillover-gateway --xds-address %s:%d --admin-address 0.0.0.0 --admin-port %d --stats-port %d" (include "spillover.xdsHost" .) (int .Values.controller.xdsPort) (int .Values.gateway.adminPort) (int .Values.gateway.statsPort) -}}
{{- if .Values.tls.enabled -}}
{{- printf " --xds-tls-dir /etc/spillover/xds-tls --xds-sds-dir /etc/envoy --xds-server-name %s" (include "spillover.serverName" .) -}}
{{- end -}}
{{- end -}}

{{/* "true" when an optional value is given: 0 counts (a debounce of 0 is meaningful), "" and null do not. */}}
{{- define "spillover.isSet" -}}
{{- if and (not (kindIs "invalid" .)) (ne (toString .) "") }}true{{ end -}}
{{- end -}}

{{/* A PodDisruptionBudget's one bound: maxUnavailable when given (the API refuses both), else minAvailable. */}}
{{- define "spillover.disruptionBudget" -}}
{{- if include "spillover.isSet" .maxUnavailable -}}
maxUnavailable: {{ .maxUnavailable }}
{{- else -}}
minAvailable: {{ .minAvailable }}
{{- end -}}
{{- end -}}

{{/* "true" when the replicas run the fleet's peer channel (leader election, the fleet, a token Secret). */}}
{{- define "spillover.peerChannel" -}}
{{- if and .Values.leaderElection.enabled .Values.fleet.enabled .Values.fleet.tokenSecret }}true{{ end }}
{{- end }}
