#!/usr/bin/env bash
# Builds the benchmarks' Go programs from one of their Go modules (modules through the Go module proxy,
# Go's user-level GOCACHE/GOMODCACHE, so other clones and projects share them) into a cache directory.
# Idempotent: a binary is rebuilt only when the module's go.mod, go.sum, Go sources or the Go version
# changed. Prints the bin directory on its last line.
#
#   benchmarks/gobuild.sh <module dir> <cache dir> <name>=<package> ...
#
# Used by benchmarks/datapath_go/build.sh and benchmarks/peer_go/build.sh. Environment: GO (default: go on
# PATH, then /usr/local/go/bin/go), and Go's GOCACHE / GOMODCACHE / GOPROXY as usual.
# The Go environment (caches, GOFLAGS, finding Go) is scripts/go-env.sh, shared with tests/apiserver/build.sh.
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 <module dir> <cache dir> <name>=<package> ..." >&2; exit 2; }
module="$(cd "$1" && pwd)"
cache="$2"
shift 2
bin="$cache/bin"
mkdir -p "$bin"

# shellcheck source=../scripts/go-env.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/scripts/go-env.sh"
go_env "$cache" gobuild.sh "the benchmark programs of ${module##*/}"

# One build at a time per cache directory (parallel benchmark runs, several worktrees sharing .cache).
exec 9>"$cache/.build.lock"
flock 9

stamp="$({ cat "$module/go.mod" "$module/go.sum"; find "$module" -name '*.go' -print0 | sort -z | xargs -0 cat; "$GO" env GOVERSION; } | sha256sum | cut -d' ' -f1)"
for spec in "$@"; do
    name="${spec%%=*}"
    package="${spec#*=}"
    out="$bin/$name"
    if [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
        continue
    fi
    echo "building $name with $("$GO" env GOVERSION) (GOCACHE $GOCACHE)" >&2
    (cd "$module" && "$GO" build -ldflags=-s -o "$out.new" "$package") >&2
    mv -f "$out.new" "$out"
    echo "$stamp" > "$out.stamp"
done
echo "$bin"
