#!/usr/bin/env bash
# Builds the data-path benchmark's peers from this Go module into <repo>/.cache/datapath/bin: `extproc`
# (the ext_proc hop) and `upstream` (the fast HTTP upstream), with benchmarks/gobuild.sh (module proxy,
# Go's user-level caches; a no-op when both are up to date). Prints the bin directory on its last line.
#
# Environment: SPILLOVER_DATAPATH_CACHE (default <repo>/.cache/datapath), GO, and Go's GOCACHE /
# GOMODCACHE / GOPROXY as usual.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
exec "$root/benchmarks/gobuild.sh" "$here" "${SPILLOVER_DATAPATH_CACHE:-$root/.cache/datapath}" \
    extproc=./extproc upstream=./upstream
