#!/usr/bin/env bash
# Builds the control-plane image from the repository's Dockerfile without a Docker engine or a registry:
# buildah (Debian package) builds it on a Debian bookworm base made by debootstrap from the Debian
# mirror, with python3 and ca-certificates (what `debian:bookworm-slim` + the Dockerfile's apt step give).
# Needs root (debootstrap, buildah's vfs storage); apt packages: buildah debootstrap.
#
#   image/build.sh                     build ghcr.io/spillover-dev/spillover:<pyproject version>
#   image/build.sh --oci-archive F     and write it to F (an OCI archive: `podman load -i F`, `skopeo copy`)
#
# Everything lives in SPILLOVER_IMAGE_CACHE (default <repo>/.cache/image): the base rootfs tarball
# (made once), buildah's storage (storage-DRIVER/, run-DRIVER/) and the logs. Prints the buildah command to run the
# image's tools against that storage. When the host reaches PyPI through a TLS proxy (PIP_CERT or
# SSL_CERT_FILE names its CA bundle), that bundle and a pip.conf naming it are bind-mounted into the
# build's RUN steps only: they are not in the image.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cache="${SPILLOVER_IMAGE_CACHE:-$root/.cache/image}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd -P)"  # no symlink in the path: runc refuses a rootfs path through one
archive=""
while [ $# -gt 0 ]; do
    case "$1" in
        --oci-archive) archive="${2:?--oci-archive needs a file}"; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "image/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "image/build.sh: $tool is missing (apt-get install buildah debootstrap)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "image/build.sh: needs root (debootstrap, buildah storage)" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -n1)"
image="ghcr.io/spillover-dev/spillover:$version"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_packages=python3,ca-certificates
base_image="localhost/spillover-base:$suite"
mkdir -p "$cache/logs"
exec 9>"$cache/.build.lock"  # one build at a time (test workers, worktrees sharing .cache)
flock 9
# overlay where the kernel and filesystem allow it (a cached rebuild takes seconds), else vfs (a full
# copy per layer: minutes). The choice is written down for the tests, which read the same storage.
storage() { buildah=(buildah --root "$cache/storage-$1" --runroot "$cache/run-$1" --storage-driver "$1"); }
driver="${SPILLOVER_IMAGE_STORAGE_DRIVER:-overlay}"
storage "$driver"
if [ -z "${SPILLOVER_IMAGE_STORAGE_DRIVER:-}" ] && ! "${buildah[@]}" images >/dev/null 2>"$cache/logs/overlay.log"; then
    echo "overlay storage unusable here ($(tail -n1 "$cache/logs/overlay.log")): using vfs"
    driver=vfs
    storage "$driver"
fi
echo "$driver" > "$cache/storage-driver"
start=$SECONDS

# The base: debootstrap's minimal bookworm with python3, without apt's caches. Made once per
# (suite, packages, mirror); a stamp says which.
base_tar="$cache/base-$suite.tar"
base_stamp="$suite $base_packages $mirror"
if [ ! -f "$base_tar" ] || [ "$(cat "$base_tar.stamp" 2>/dev/null)" != "$base_stamp" ]; then
    echo "base: debootstrap $suite ($base_packages) from $mirror; log: $cache/logs/debootstrap.log"
    t=$SECONDS
    rootfs="$cache/rootfs.tmp"
    # The mirror is the network: a failed fetch (seen: a DNS lookup timing out) is tried again, twice at most.
    for pause in 10 30 none; do
        rm -rf "$rootfs"
        if debootstrap --variant=minbase --include="$base_packages" "$suite" "$rootfs" "$mirror" \
                >"$cache/logs/debootstrap.log" 2>&1; then
            break
        fi
        if [ "$pause" = none ]; then
            tail -n 20 "$cache/logs/debootstrap.log" >&2
            echo "image/build.sh: debootstrap failed (3 attempts)" >&2
            exit 1
        fi
        echo "base: debootstrap failed ($(tail -n 1 "$cache/logs/debootstrap.log")); again in ${pause}s"
        sleep "$pause"
    done
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/*
    tar -C "$rootfs" --numeric-owner -cf "$base_tar.new" .
    rm -rf "$rootfs"
    mv -f "$base_tar.new" "$base_tar"
    echo "$base_stamp" > "$base_tar.stamp"
    "${buildah[@]}" rmi -f "$base_image" >/dev/null 2>&1 || true
    echo "base: made in $((SECONDS - t))s"
fi
if ! "${buildah[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
    ctx="$cache/base-context"
    rm -rf "$ctx" && mkdir -p "$ctx"
    ln "$base_tar" "$ctx/rootfs.tar" 2>/dev/null || cp "$base_tar" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/sh"]\n' > "$ctx/Containerfile"
    "${buildah[@]}" bud --quiet --isolation chroot -t "$base_image" -f "$ctx/Containerfile" "$ctx" \
        >"$cache/logs/base-image.log" 2>&1 || { tail -n 20 "$cache/logs/base-image.log" >&2; exit 1; }
    rm -rf "$ctx"
    echo "base: imported as $base_image"
fi

mounts=()
ca="${PIP_CERT:-${SSL_CERT_FILE:-}}"
if [ -n "$ca" ] && [ -f "$ca" ]; then
    printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' > "$cache/pip.conf"
    mounts=(-v "$ca:/etc/ssl/certs/host-ca-bundle.crt:ro" -v "$cache/pip.conf:/etc/pip.conf:ro")
fi

echo "building $image from $root/Dockerfile on $base_image; log: $cache/logs/build.log"
t=$SECONDS
if ! "${buildah[@]}" bud --layers --isolation chroot --network host "${mounts[@]}" \
        --build-arg "BASE_IMAGE=$base_image" -t "$image" -f "$root/Dockerfile" "$root" \
        >"$cache/logs/build.log" 2>&1; then
    tail -n 30 "$cache/logs/build.log" >&2
    echo "image/build.sh: building $image failed (full log: $cache/logs/build.log)" >&2
    exit 1
fi
echo "built $image in $((SECONDS - t))s"
if [ -n "$archive" ]; then
    rm -f "$archive"
    "${buildah[@]}" push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
    echo "wrote $archive"
fi
echo "image ready in $((SECONDS - start))s; inspect: ${buildah[*]} inspect $image"
