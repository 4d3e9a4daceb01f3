#!/usr/bin/env bash
# Builds a real kube-apiserver and etcd from their Go modules (through the Go module proxy) into
# .cache/k8s/bin, for the tests under tests/k8s. Idempotent: exits at once when both binaries are
# there and were built from the pinned go.mod/go.sum with the current flags.
#
#   tests/k8s/build.sh                 build what is missing or stale
#   tests/k8s/build.sh --force         rebuild both (the Go build cache still applies)
#   tests/k8s/build.sh --pin 1.37.2    rewrite tests/k8s/apiserver/go.mod + go.sum for another
#                                      k8s.io/kubernetes release (every staging module replaced by its
#                                      v0.x.y), without building
#
# Pins: tests/k8s/apiserver/go.mod (k8s.io/kubernetes) and tests/k8s/etcd/go.mod
# (go.etcd.io/etcd/server/v3), each with a committed go.sum. The module cache, build cache and
# GOPATH live under the cache directory too, so nothing goes to $HOME and reruns are fast.
#
# Environment: SPILLOVER_K8S_CACHE (default <repo>/.cache/k8s), GO (default: go on PATH, then
# /usr/local/go/bin/go), K8S_BUILD_JOBS (go build -p, default: number of CPUs; 2 on CI).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${SPILLOVER_K8S_CACHE:-$root/.cache/k8s}"
bin="$cache/bin"
logs="$cache/logs"

force=0
pin=""
while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --pin) pin="${2:?--pin needs a version such as 1.37.2}"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

mkdir -p "$bin" "$logs"

# One build at a time (parallel pytest workers, make -j): the others wait, then find it done.
exec 9>"$cache/.build.lock"
flock 9

# The pinned version of a module in a go.mod: "require M vX" or "M vX" inside a require block.
pinned() { awk -v m="$2" '($1 == "require" && $2 == m) { print $3; exit } ($1 == m && $2 ~ /^v/) { print $2; exit }' "$1"; }
k8s_version() { pinned "$here/apiserver/go.mod" k8s.io/kubernetes; }
etcd_version() { pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3; }

# Kubernetes sets its version through -X at link time (hack/lib/version.sh); a plain `go build`
# would report v0.0.0-master. The binary's emulation/compatibility version does not depend on it.
apiserver_ldflags() {
    local v="$1" major minor
    major="${v#v}"; major="${major%%.*}"
    minor="${v#v*.}"; minor="${minor%%.*}"
    local pkg=k8s.io/component-base/version
    echo "-s -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
}

stamp_of() {  # what a binary was built from: go.mod, go.sum, Go version and flags
    local dir="$1" flags="$2"
    { cat "$dir/go.mod" "$dir/go.sum"; echo "$flags"; echo "$go_version"; } | sha256sum | cut -d' ' -f1
}

reports() {  # binary, text its --version must contain (no pipe into grep -q: SIGPIPE + pipefail)
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    [[ "$out" == *"$2"* ]]
}

is_current() {  # binary, stamp, expected --version substring
    local binary="$1" stamp="$2" expect="$3"
    [ "$force" = 0 ] && [ -x "$binary" ] && [ -f "$binary.stamp" ] \
        && [ "$(cat "$binary.stamp")" = "$stamp" ] \
        && reports "$binary" "$expect"
}

# Fast path, without needing Go at all: both binaries present, stamps and --version match.
# (The stamp includes the Go version, which needs Go; the pre-check compares a version-free stamp.)
quick_stamp() { { cat "$1/go.mod" "$1/go.sum"; echo "$2"; } | sha256sum | cut -d' ' -f1; }
kv="$(k8s_version)"; ev="$(etcd_version)"
if [ -z "$pin" ] && [ "$force" = 0 ] \
    && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ] \
    && [ "$(cat "$bin/kube-apiserver.quickstamp" 2>/dev/null)" = "$(quick_stamp "$here/apiserver" "$(apiserver_ldflags "$kv")")" ] \
    && [ "$(cat "$bin/etcd.quickstamp" 2>/dev/null)" = "$(quick_stamp "$here/etcd" "-s")" ] \
    && reports "$bin/kube-apiserver" "Kubernetes $kv" \
    && reports "$bin/etcd" "etcd Version: ${ev#v}"; then
    echo "k8s binaries up to date: kube-apiserver $kv, etcd $ev in $bin"
    exit 0
fi

GO="${GO:-$(command -v go || true)}"
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
if [ -z "$GO" ] || ! "$GO" version >/dev/null 2>&1; then
    echo "build.sh: Go is needed to build kube-apiserver and etcd (k8s.io/kubernetes $kv wants go >= 1.26)" >&2
    exit 1
fi
export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache" GOPATH="$cache/gopath" GOTMPDIR="$cache/tmp"
mkdir -p "$GOTMPDIR"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly -trimpath -modcacherw"  # -modcacherw: `rm -rf .cache` works
export GOTELEMETRY=off
unset GOOS GOARCH GOWORK || true
export GOWORK=off
go_version="$("$GO" env GOVERSION)"
jobs="${K8S_BUILD_JOBS:-$(nproc)}"

if [ -n "$pin" ]; then
    pin="${pin#v}"
    staging_minor="0.${pin#*.}"
    echo "pinning k8s.io/kubernetes v$pin (staging modules at v$staging_minor)"
    modfile="$(GOFLAGS="-mod=mod -modcacherw" "$GO" mod download -json "k8s.io/kubernetes@v$pin" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')"
    [ -f "$modfile" ] || { echo "build.sh: k8s.io/kubernetes v$pin not found on the module proxy" >&2; exit 1; }
    staging="$(awk '/^require \(/ { r = 1; next } r && /^\)/ { r = 0 }
                    r && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" { print $1 }' "$modfile" | sort -u)"
    {
        echo "// Pins the kube-apiserver that tests/k8s/build.sh builds for the k8s tests."
        echo "// k8s.io/kubernetes is not meant to be imported: its go.mod requires every staging"
        echo "// module at v0.0.0 and replaces it with ./staging/..., which only applies inside that"
        echo "// repository. Here each is replaced by its published v$staging_minor tag on the module proxy."
        echo "// Regenerate with: tests/k8s/build.sh --pin <version>"
        echo "module spillover.local/k8s-apiserver"
        echo
        echo "go $(sed -n 's/^go //p' "$modfile")"
        echo
        echo "require k8s.io/kubernetes v$pin"
        echo
        echo "replace ("
        for m in $staging; do printf '\t%s => %s v%s\n' "$m" "$m" "$staging_minor"; done
        echo ")"
    } > "$here/apiserver/go.mod"
    rm -f "$here/apiserver/go.sum"
    (cd "$here/apiserver" && GOFLAGS="-mod=mod -modcacherw" "$GO" get -tool k8s.io/kubernetes/cmd/kube-apiserver \
        && GOFLAGS="-mod=mod -modcacherw" "$GO" mod tidy)
    echo "pinned: $here/apiserver/go.mod and go.sum now name k8s.io/kubernetes v$pin; run $0 to build"
    exit 0
fi

build() {  # name, module dir, package, version string expected in --version, ldflags
    local name="$1" dir="$2" pkg="$3" expect="$4" ldflags="$5"
    local out="$bin/$name" stamp
    stamp="$(stamp_of "$dir" "$ldflags")"
    if is_current "$out" "$stamp" "$expect"; then
        echo "$name up to date ($expect)"
    else
        echo "building $name ($expect) with $go_version, -p $jobs; log: $logs/$name.build.log"
        local start=$SECONDS
        rm -f "$out.stamp" "$out.quickstamp"
        local timer=()
        [ -x /usr/bin/time ] && timer=(/usr/bin/time -v)  # Debian package "time": peak memory
        if ! (cd "$dir" && "${timer[@]}" "$GO" build -p "$jobs" -ldflags="$ldflags" -o "$out.new" "$pkg") \
                >"$logs/$name.build.log" 2>&1; then
            tail -n 40 "$logs/$name.build.log" >&2
            echo "build.sh: building $name failed after $((SECONDS - start))s (full log: $logs/$name.build.log)" >&2
            exit 1
        fi
        mv -f "$out.new" "$out"
        echo "$stamp" > "$out.stamp"
        local rss
        rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$logs/$name.build.log")"
        echo "built $name in $((SECONDS - start))s (peak RSS of one compile/link process: $((${rss:-0} / 1024)) MiB)"
    fi
    quick_stamp "$dir" "$ldflags" > "$out.quickstamp"
    if ! reports "$out" "$expect"; then
        echo "build.sh: $out --version does not report $expect:" >&2
        "$out" --version >&2 || true
        exit 1
    fi
}

total=$SECONDS
# -trimpath is in GOFLAGS; -s drops the symbol table (smaller binaries, faster link).
build kube-apiserver "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "Kubernetes $kv" "$(apiserver_ldflags "$kv")"
build etcd "$here/etcd" go.etcd.io/etcd/server/v3 "etcd Version: ${ev#v}" "-s"
echo "k8s binaries ready in $((SECONDS - total))s: $bin (kube-apiserver $kv, etcd $ev)"
