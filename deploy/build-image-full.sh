#!/usr/bin/env bash
# The whole multi-stage build of deploy/Dockerfile, as `docker build` runs it for a user with
# public images: the `build` stage compiles banditd and banditd-loadgen inside the container
# (crates from crates.io), then the runtime and loadgen stages; then deploy/test-image.sh
# runs its checks against the two images.
#
# The rust and debian images cannot be pulled here, so the build arguments point at local
# ones: BUILDER_IMAGE is made from the Rust toolchain installed on this machine (plus gcc and
# the host's CA certificates) and RUNTIME_IMAGE by debootstrap (deploy/lib.sh).
#
# Slow: it compiles every dependency from scratch (measured in README "Deployment"). CI skips
# it unless BANDITD_CI_FULL_IMAGE_BUILD=1 and says so; deploy/test-image.sh builds the same
# runtime stage from host-built binaries instead.
#
# Usage: deploy/build-image-full.sh   (root, Debian 12; installs what it needs)
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
need_podman
need_base_image
need_builder_image

for target in runtime loadgen; do
    tag=localhost/banditd:full; [ "$target" = loadgen ] && tag=localhost/banditd-loadgen:full
    start=$(date +%s)
    # The second target reuses the first's `build` stage (podman's layer cache). Docker's
    # image format keeps the HEALTHCHECK (OCI has none).
    pm build --isolation chroot --network host --format docker \
        --ignorefile deploy/Dockerfile.dockerignore -f deploy/Dockerfile \
        --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
        --target "$target" -t "$tag" . > "$DEPLOY_WORK/build-full-$target.log" 2>&1 \
        || { tail -30 "$DEPLOY_WORK/build-full-$target.log"; die "podman build --target $target"; }
    say "ok - full multi-stage build of $tag (--target $target) in $(( $(date +%s) - start )) s"
done

"$ROOT/deploy/test-image.sh" --image localhost/banditd:full --loadgen-image localhost/banditd-loadgen:full
