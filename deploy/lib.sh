# shellcheck shell=bash
# Shared by deploy/check-manifests.sh, deploy/test-image.sh and deploy/build-image-full.sh
# (sourced, not run). Everything these scripts need is installed here from Debian or PyPI,
# so they work on a fresh Debian 12 machine run as root (CI) with no Docker daemon, no
# registry and no base image to pull.
#
# Podman settings that work on these machines (measured; see README "Deployment"):
#   - runc rather than crun, the vfs storage driver, cgroupfs: no systemd, no overlay mounts
#     inside this VM;
#   - a containers.conf with `default_ulimits = []` (CONTAINERS_CONF): the default ulimits
#     cannot be set here and every `podman run` fails with them;
#   - `--isolation chroot` for builds and `--network host` for builds and runs: no network
#     namespaces here (the container's ports are the host's loopback ports).
# Every setting can be overridden from the environment (DEPLOY_PODMAN_FLAGS and the ones
# below), e.g. on a workstation where rootful podman works with its defaults.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_WORK="${DEPLOY_WORK:-$ROOT/target/deploy}"
DEPLOY_VENV="${DEPLOY_VENV:-$ROOT/target/deploy-tools}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_RELEASE="${DEBIAN_RELEASE:-bookworm}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian:$DEBIAN_RELEASE-slim}"
DEPLOY_PODMAN_FLAGS="${DEPLOY_PODMAN_FLAGS:---runtime runc --storage-driver vfs --cgroup-manager cgroupfs}"
mkdir -p "$DEPLOY_WORK"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# Usage: apt_install [--with-recommends] PKG...
apt_install() {
    local recommends=--no-install-recommends
    if [ "$1" = --with-recommends ]; then recommends=""; shift; fi
    say "installing $* (Debian)"
    if [ -z "${DEPLOY_APT_UPDATED:-}" ]; then apt-get update -qq; DEPLOY_APT_UPDATED=1; fi
    # shellcheck disable=SC2086 # empty when recommends are wanted
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $recommends "$@" >/dev/null
}
# Debian packages, installed when the command is missing. Usage: need_debian CMD PKG...
need_debian() {
    local cmd="$1"; shift
    command -v "$cmd" >/dev/null || apt_install "$@"
}

# The pinned PyPI tools (deploy/requirements-ci.txt) in their own virtualenv, first on PATH.
need_venv() {
    local req="$ROOT/deploy/requirements-ci.txt" stamp="$DEPLOY_VENV/.requirements"
    if ! cmp -s "$req" "$stamp" 2>/dev/null; then
        say "installing deploy/requirements-ci.txt into $DEPLOY_VENV (PyPI)"
        # Debian's own python3 keeps venv and ensurepip in a separate package.
        python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
        python3 -m venv "$DEPLOY_VENV"
        "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        cp "$req" "$stamp"
    fi
    export PATH="$DEPLOY_VENV/bin:$PATH"
}

# podman with this machine's settings. The containers.conf is written once per work dir.
need_podman() {
    # With its recommended packages, as measured (`apt-get install podman runc`).
    command -v podman >/dev/null || apt_install --with-recommends podman runc
    need_debian runc runc
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        export CONTAINERS_CONF="$DEPLOY_WORK/containers.conf"
        printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
    fi
}
# Podman schedules a container's HEALTHCHECK with systemd timers; without systemd (here) it
# logs an error on every run, stop and rm and carries on. Those lines are dropped; the
# HEALTHCHECK itself still runs with `podman healthcheck run`.
pm() {
    # shellcheck disable=SC2086 # the flags are words on purpose
    podman $DEPLOY_PODMAN_FLAGS "$@" 2> >(grep -v 'unable to get systemd connection' >&2)
}

# A Debian root made by debootstrap, imported as an image: base images cannot be pulled here.
# Usage: debian_image IMAGE [--include=PKG,...] [--change INSTR]... [-- SETUP_FUNCTION]
# SETUP_FUNCTION (optional) is called with the root directory before the import.
debian_image() {
    local image="$1"; shift
    local include=() changes=() setup=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --include=*) include=("$1") ;;
            --change) changes+=(--change "$2"); shift ;;
            --) setup="$2"; shift ;;
            *) die "debian_image: unknown argument $1" ;;
        esac
        shift
    done
    if pm image exists "$image"; then return 0; fi
    need_debian debootstrap debootstrap
    local dir="$DEPLOY_WORK/rootfs-${image//[^A-Za-z0-9]/_}"
    rm -rf "$dir"
    say "debootstrap $DEBIAN_RELEASE ${include[*]} from $DEBIAN_MIRROR for $image"
    debootstrap --variant=minbase "${include[@]}" "$DEBIAN_RELEASE" "$dir" "$DEBIAN_MIRROR" \
        > "$DEPLOY_WORK/debootstrap.log" 2>&1 || { tail -20 "$DEPLOY_WORK/debootstrap.log"; die "debootstrap"; }
    # What the slim images leave out: downloaded packages and package lists.
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    if [ -n "$setup" ]; then "$setup" "$dir"; fi
    tar -C "$dir" -c . | pm import "${changes[@]}" - "$image" >/dev/null 2>&1 || die "podman import $image"
    rm -rf "$dir"
    say "imported $image"
}

need_base_image() {
    debian_image "$BASE_IMAGE"
}

# A Rust builder image for the Dockerfile's `build` stage, made from the toolchain installed
# on this machine (rustup cannot download one here, nor can the rust image be pulled), laid
# out like the official image: toolchain on PATH, CARGO_HOME=/usr/local/cargo.
BUILDER_IMAGE="${BUILDER_IMAGE:-localhost/banditd-builder:$(rustc --version 2>/dev/null | cut -d' ' -f2)}"
copy_host_toolchain() {
    local sysroot; sysroot="$(rustc --print sysroot)"
    mkdir -p "$1/usr/local/rust/bin" "$1/usr/local/cargo"
    cp "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$sysroot/bin/rustdoc" "$1/usr/local/rust/bin/"
    cp -a "$sysroot/lib" "$1/usr/local/rust/"
    # The host's trust store, so that cargo reaches crates.io through the same TLS-inspecting
    # egress proxy the host uses (certificates only; nothing secret).
    cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
}
need_builder_image() {
    debian_image "$BUILDER_IMAGE" --include=gcc,libc6-dev,ca-certificates \
        --change "ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change "ENV CARGO_HOME=/usr/local/cargo" \
        -- copy_host_toolchain
}
