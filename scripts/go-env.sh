# The Go build environment of the repository's Go programs, sourced (not run) by benchmarks/gobuild.sh
# (the benchmarks' Go peers) and tests/apiserver/build.sh (kube-apiserver, etcd, kubectl and helm for
# the tests), so that both find Go and build the same way:
#
#   . "$root/scripts/go-env.sh"
#   go_env <cache dir> <caller> <what>   # sets GO and exports the build's environment, or exits 1
#
# GO: as given, else `go` on PATH, else /usr/local/go/bin/go; <caller> and <what> only name the build in
# the message when there is no Go. The build: no workspace (GOWORK=off), no telemetry, no cgo, the
# host's platform; go.sum decides (-mod=readonly), -trimpath, and -modcacherw so that the module cache can
# be removed with a plain `rm -rf`. Go's caches are the user's (`go env GOCACHE`, `go env GOMODCACHE`),
# shared with other clones and projects, unless they are unusable (no HOME, GOCACHE=off): then
# <cache dir>/gocache and <cache dir>/gomod.

go_env() {
    local cache="$1" caller="$2" what="$3" gocache gomodcache
    GO="${GO:-$(command -v go || true)}"
    [ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
    if [ -z "$GO" ] || ! "$GO" version >/dev/null 2>&1; then
        echo "$caller: Go >= 1.26 is needed to build $what (https://go.dev/dl/, or GO=/path/to/go)" >&2
        exit 1
    fi
    export GOWORK=off GOTELEMETRY=off CGO_ENABLED=0
    unset GOOS GOARCH || true
    gocache="$("$GO" env GOCACHE 2>/dev/null || true)"
    case "$gocache" in ""|off) gocache="$cache/gocache" ;; esac
    gomodcache="$("$GO" env GOMODCACHE 2>/dev/null || true)"
    [ -n "$gomodcache" ] || gomodcache="$cache/gomod"
    export GOCACHE="$gocache" GOMODCACHE="$gomodcache" GOFLAGS="-mod=readonly -trimpath -modcacherw"
}
