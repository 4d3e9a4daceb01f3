#!/usr/bin/env bash
# Builds the real Kubernetes tools the tests use from their Go modules (through the Go module proxy)
# into .cache/k8s/bin: kube-apiserver and kubectl (one k8s.io/kubernetes module), etcd, and helm.
# Idempotent: exits at once when every binary is there and was built from the pinned go.mod/go.sum
# with the current flags.
#
#   tests/apiserver/build.sh                 build what is missing or stale (all four)
#   tests/apiserver/build.sh helm kubectl    only these (names: kube-apiserver kubectl etcd helm)
#   tests/apiserver/build.sh --force         rebuild (the Go build cache still applies)
#   tests/apiserver/build.sh --pin 1.37.2    rewrite tests/apiserver/kube-apiserver/go.mod + go.sum for another
#                                      k8s.io/kubernetes release (every staging module replaced by its
#                                      v0.x.y), without building
#
# Pins, each a go.mod with a committed go.sum: tests/apiserver/kube-apiserver (k8s.io/kubernetes: kube-apiserver
# and kubectl), tests/apiserver/etcd (go.etcd.io/etcd/server/v3), tests/apiserver/helm (helm.sh/helm/v3).
# Go's own caches are the user's (`go env GOCACHE`, `go env GOMODCACHE`: ~/.cache/go-build and
# ~/go/pkg/mod by default), so a second clone of the repository, or another project, reuses them.
#
# Environment: SPILLOVER_K8S_CACHE (default <repo>/.cache/k8s: binaries, logs, GOTMPDIR), GO (default:
# go on PATH, then /usr/local/go/bin/go), K8S_BUILD_JOBS (go build -p, default: number of CPUs),
# K8S_BUILD_TICK (seconds between progress lines during a compile, default 30), and Go's GOCACHE /
# GOMODCACHE / GOPROXY as usual.
# The Go environment (caches, GOFLAGS, finding Go) is scripts/go-env.sh, shared with benchmarks/gobuild.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${SPILLOVER_K8S_CACHE:-$root/.cache/k8s}"
bin="$cache/bin"
logs="$cache/logs"
all_names=(kube-apiserver kubectl etcd helm)

force=0
pin=""
names=()
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --pin) pin="${2:?--pin needs a version such as 1.37.2}"; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        kube-apiserver|kubectl|etcd|helm) names+=("$1") ;;
        *) echo "build.sh: unknown argument $1 (binaries: ${all_names[*]})" >&2; exit 2 ;;
    esac
    shift
done
[ ${#names[@]} -gt 0 ] || names=("${all_names[@]}")

mkdir -p "$bin" "$logs"
start_all=$SECONDS

elapsed() {  # seconds -> "2m10s" / "9s"
    local s="$1"
    if [ "$s" -ge 60 ]; then echo "$((s / 60))m$((s % 60))s"; else echo "${s}s"; fi
}

# One build at a time (parallel pytest workers, make -j, several worktrees sharing the cache
# directory): the others wait, then find it done.
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
    echo "waiting for another build to finish (lock $cache/.build.lock)"
    flock 9
fi

# The pinned version of a module in a go.mod: "require M vX" or "M vX" inside a require block.
pinned() { awk -v m="$2" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$1"; }
kv="$(pinned "$here/kube-apiserver/go.mod" k8s.io/kubernetes)"
ev="$(pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
hv="$(pinned "$here/helm/go.mod" helm.sh/helm/v3)"
client_go_of_helm="$(pinned "$here/helm/go.mod" k8s.io/client-go)"

# Kubernetes sets its version through -X at link time (hack/lib/version.sh), in both version packages;
# a plain `go build` would report v0.0.0-master. kube-apiserver's emulation version does not depend on it.
kubernetes_ldflags() {
    local v="$1" major minor flags="-s"
    major="${v#v}"; major="${major%%.*}"
    minor="${v#v*.}"; minor="${minor%%.*}"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    echo "$flags"
}

# Helm's Makefile: its version, and the Kubernetes version `helm lint`/`template` assume by default
# (client-go v0.X.Y -> 1.X), both through -X.
helm_ldflags() {
    local v="$1" cg="$2" minor
    minor="${cg#v0.}"; minor="${minor%%.*}"
    local flags="-s -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
    done
    echo "$flags"
}

# name -> module directory, main package, ldflags, version command, text its output must contain
spec() {
    case "$1" in
        kube-apiserver) echo "$here/kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|$(kubernetes_ldflags "$kv")|--version|Kubernetes $kv" ;;
        kubectl) echo "$here/kube-apiserver|k8s.io/kubernetes/cmd/kubectl|$(kubernetes_ldflags "$kv")|version --client|Client Version: $kv" ;;
        etcd) echo "$here/etcd|go.etcd.io/etcd/server/v3|-s|--version|etcd Version: ${ev#v}" ;;
        helm) echo "$here/helm|helm.sh/helm/v3/cmd/helm|$(helm_ldflags "$hv" "$client_go_of_helm")|version --template {{.Version}}|$hv" ;;
    esac
}
field() { local IFS='|'; local parts; read -r -a parts <<< "$(spec "$1")"; echo "${parts[$2]}"; }

reports() {  # binary, version command, text its output must contain (no pipe into grep: SIGPIPE + pipefail)
    local out cmd
    read -r -a cmd <<< "$2"
    out="$("$1" "${cmd[@]}" 2>/dev/null)" || return 1
    [[ "$out" == *"$3"* ]]
}

# The fast path needs no Go at all: the stamp without the Go version (quickstamp) and the binary's
# own version output. A full stamp (with `go env GOVERSION`) decides whether a slow build relinks.
quick_stamp() { { cat "$1/go.mod" "$1/go.sum"; echo "$2"; } | sha256sum | cut -d' ' -f1; }
up_to_date() {  # name
    local name="$1" out="$bin/$1"
    [ "$force" = 0 ] && [ -x "$out" ] \
        && [ "$(cat "$out.quickstamp" 2>/dev/null)" = "$(quick_stamp "$(field "$name" 0)" "$(field "$name" 2)")" ] \
        && reports "$out" "$(field "$name" 3)" "$(field "$name" 4)"
}
describe() { echo "$1 $(field "$1" 4 | sed 's/.* //')"; }  # "kubectl v1.37.2"

if [ -z "$pin" ]; then
    stale=()
    for name in "${names[@]}"; do up_to_date "$name" || stale+=("$name"); done
    if [ ${#stale[@]} -eq 0 ]; then
        echo "k8s tools up to date in $bin: $(for n in "${names[@]}"; do printf '%s, ' "$(describe "$n")"; done | sed 's/, $//')"
        exit 0
    fi
fi

# shellcheck source=../../scripts/go-env.sh
. "$root/scripts/go-env.sh"
go_env "$cache" build.sh "${stale[*]:-the k8s tools}"
# GOTMPDIR: the big link of kube-apiserver writes its temporary files next to the binaries, not to a
# possibly small tmpfs /tmp.
export GOTMPDIR="$cache/tmp"
mkdir -p "$GOTMPDIR"
go_version="$("$GO" env GOVERSION)"
jobs="${K8S_BUILD_JOBS:-$(nproc)}"
tick="${K8S_BUILD_TICK:-30}"

if [ -n "$pin" ]; then
    pin="${pin#v}"
    staging_minor="0.${pin#*.}"
    echo "pinning k8s.io/kubernetes v$pin (staging modules at v$staging_minor)"
    modfile="$(GOFLAGS="-mod=mod -modcacherw" "$GO" mod download -json "k8s.io/kubernetes@v$pin" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
    [ -f "$modfile" ] || { echo "build.sh: k8s.io/kubernetes v$pin not found on the module proxy" >&2; exit 1; }
    staging="$(awk '/^require \(/ { r = 1; next } r && /^\)/ { r = 0 }
                    r && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$modfile" | sort -u)"
    {
        echo "// Pins the kube-apiserver and kubectl that tests/apiserver/build.sh builds for the tests."
        echo "// k8s.io/kubernetes is not meant to be imported: its go.mod requires every staging"
        echo "// module at v0.0.0 and replaces it with ./staging/..., which only applies inside that"
        echo "// repository. Here each is replaced by its published v$staging_minor tag on the module proxy."
        echo "// Regenerate with: tests/apiserver/build.sh --pin <version>"
        echo "module spillover.local/k8s-apiserver"
        echo
        echo "go $(sed -n 's/^go //p' "$modfile")"
        echo
        echo "require k8s.io/kubernetes v$pin"
        echo
        echo "replace ("
        for m in $staging; do printf '\t%s => %s v%s\n' "$m" "$m" "$staging_minor"; done
        echo ")"
    } > "$here/kube-apiserver/go.mod"
    rm -f "$here/kube-apiserver/go.sum"
    (cd "$here/kube-apiserver" \
        && GOFLAGS="-mod=mod -modcacherw" "$GO" get -tool k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
        && GOFLAGS="-mod=mod -modcacherw" "$GO" mod tidy)
    echo "pinned: $here/kube-apiserver/go.mod and go.sum now name k8s.io/kubernetes v$pin; run $0 to build"
    exit 0
fi

stamp_of() {  # what a binary was built from: go.mod, go.sum, flags and the Go version
    { cat "$1/go.mod" "$1/go.sum"; echo "$2"; echo "$go_version"; } | sha256sum | cut -d' ' -f1
}

ticker=""
stop_ticker() {
    if [ -n "$ticker" ]; then kill "$ticker" 2>/dev/null || true; wait "$ticker" 2>/dev/null || true; ticker=""; fi
}
trap stop_ticker EXIT

# Phase 1: the modules, once per module directory (a no-op when they are in GOMODCACHE already).
declare -A downloaded=()
download() {  # module directory
    local dir="$1" t=$SECONDS count
    [ -z "${downloaded[$dir]:-}" ] || return 0
    downloaded[$dir]=1
    echo "modules of ${dir#"$root"/}: fetching what is missing into $GOMODCACHE (from ${GOPROXY:-$("$GO" env GOPROXY)})"
    if ! count="$(cd "$dir" && "$GO" mod download -json 2>>"$logs/download.log" | grep -c '"Path"')"; then
        tail -n 20 "$logs/download.log" >&2
        echo "build.sh: downloading the modules of $dir failed after $(elapsed $((SECONDS - t)))" >&2
        exit 1
    fi
    echo "modules of ${dir#"$root"/}: $count ready in $(elapsed $((SECONDS - t)))"
}

# Phase 2: one compile+link per binary, with a progress line every $tick seconds.
build() {  # name
    local name="$1" dir pkg ldflags vcmd expect out stamp
    dir="$(field "$name" 0)"; pkg="$(field "$name" 1)"; ldflags="$(field "$name" 2)"
    vcmd="$(field "$name" 3)"; expect="$(field "$name" 4)"
    out="$bin/$name"
    stamp="$(stamp_of "$dir" "$ldflags")"
    if [ "$force" = 0 ] && [ -x "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ] \
            && reports "$out" "$vcmd" "$expect"; then
        echo "$name up to date ($expect)"
    else
        download "$dir"
        local total start=$SECONDS log="$logs/$name.build.log"
        total="$(cd "$dir" && "$GO" list -deps "$pkg" 2>/dev/null | wc -l)" || total="?"
        echo "building $name ($expect, $total packages) with $go_version, -p $jobs, GOCACHE $GOCACHE; log: $log"
        rm -f "$out.stamp" "$out.quickstamp"
        : > "$log"
        (
            # The lock is the build's, not the ticker's; its `sleep` ends with it (no stray child
            # keeping the caller's pipe open).
            exec 9>&-
            sleeper=""
            trap '[ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null; exit 0' TERM
            while :; do
                sleep "$tick" </dev/null >/dev/null 2>&1 &
                sleeper=$!
                wait "$sleeper" || true
                # `go build -v` names each package it compiles (not those it finds in GOCACHE).
                compiled="$(grep -cE '^[A-Za-z0-9][A-Za-z0-9._~/+-]*$' "$log" || true)"
                echo "  still building $name… $(elapsed $((SECONDS - start))) ($compiled of $total packages compiled, the rest cached or waiting)"
            done
        ) &
        ticker=$!
        local timer=()
        [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)  # Debian package "time": peak memory
        if ! (cd "$dir" && "${timer[@]}" "$GO" build -v -p "$jobs" -ldflags="$ldflags" -o "$out.new" "$pkg") >>"$log" 2>&1; then
            stop_ticker
            tail -n 40 "$log" >&2
            echo "build.sh: building $name failed after $(elapsed $((SECONDS - start))) (full log: $log)" >&2
            exit 1
        fi
        stop_ticker
        mv -f "$out.new" "$out"
        echo "$stamp" > "$out.stamp"
        local rss compiled
        rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")"
        compiled="$(grep -cE '^[A-Za-z0-9][A-Za-z0-9._~/+-]*$' "$log" || true)"
        echo "built $name in $(elapsed $((SECONDS - start))): $compiled of $total packages compiled, the rest from GOCACHE (peak RSS of one compile/link: $((${rss:-0} / 1024)) MiB)"
    fi
    quick_stamp "$dir" "$ldflags" > "$out.quickstamp"
    if ! reports "$out" "$vcmd" "$expect"; then
        echo "build.sh: \`$out $vcmd\` does not report $expect:" >&2
        read -r -a cmd <<< "$vcmd"
        "$out" "${cmd[@]}" >&2 || true
        exit 1
    fi
}

for name in "${names[@]}"; do build "$name"; done
echo "k8s tools ready in $(elapsed $((SECONDS - start_all))): $bin ($(for n in "${names[@]}"; do printf '%s, ' "$(describe "$n")"; done | sed 's/, $//'))"
