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
{{- if eq .Values.splitWeights "runtime" -}}
{{- printf " --split-weights runtime" -}}
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

{{/* Refuses a splitWeights the Envoys cannot follow. With `runtime` every Envoy of the control plane must
have the RTDS layer in its bootstrap, or it routes every model all local: the chart's gateway gets it from
the chart; Envoys whose bootstrap the chart does not write (gateway.enabled=false, the fleets of
admission.rules) need splitWeightsLayerConfirmed. A controller config's own splitWeights must agree
(the chart's flag would win over it silently), and extraArgs may not set the mode behind the chart's back. */}}
{{- define "spillover.checkSplitWeights" -}}
{{- $mode := .Values.splitWeights -}}
{{- $c := .Values.controller -}}
{{- if $c.config }}
{{- $parsed := dict -}}
{{- if kindIs "string" $c.config }}{{ $parsed = fromYaml $c.config }}{{ else }}{{ $parsed = $c.config }}{{ end -}}
{{- if and (hasKey $parsed "splitWeights") (ne (toString (get $parsed "splitWeights")) $mode) }}
{{- fail (printf "controller.config sets splitWeights: %v but the chart value splitWeights is %q: set splitWeights (the chart's value, which also writes the gateway's bootstrap) and leave it out of controller.config" (get $parsed "splitWeights") $mode) }}
{{- end }}
{{- end }}
{{- range $c.extraArgs }}
{{- if hasPrefix "--split-weights" (toString .) }}
{{- fail (printf "controller.extraArgs: %s: set the chart value splitWeights instead (it also writes the gateway's bootstrap, whose RTDS layer the runtime mode needs)" (toString .)) }}
{{- end }}
{{- end }}
{{- if and (eq $mode "runtime") (not .Values.splitWeightsLayerConfirmed) (or (not .Values.gateway.enabled) (and .Values.admission.enabled .Values.admission.rules)) }}
{{- fail (printf "splitWeights=runtime with Envoys whose bootstrap this chart does not write (%s): each one routes every model all local unless its bootstrap has the RTDS layer spillover_split (`spillover bootstrap --split-weights runtime` adds it; README.md, \"Splits in Envoy's runtime\"). Once their bootstraps have it, set splitWeightsLayerConfirmed=true" (ternary "gateway.enabled=false" "the fleets of admission.rules" (not .Values.gateway.enabled))) }}
{{- end }}
{{- end }}
