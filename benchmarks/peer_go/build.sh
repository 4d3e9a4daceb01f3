#!/usr/bin/env bash
# Builds the push benchmark's peer (go-control-plane v0.14.0's SnapshotCache and xDS server, this Go
# module) into <repo>/.cache/peer/bin/peer with benchmarks/gobuild.sh (module proxy, Go's user-level
# caches; a no-op when it is up to date). Prints the bin directory on its last line.
#
# Environment: SPILLOVER_PEER_CACHE (default <repo>/.cache/peer), GO, and Go's GOCACHE / GOMODCACHE /
# GOPROXY as usual.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
exec "$root/benchmarks/gobuild.sh" "$here" "${SPILLOVER_PEER_CACHE:-$root/.cache/peer}" peer=.
