#!/usr/bin/env bash
# Build the VisionOps image: `docker build` where a Docker engine answers, else buildah without a daemon.
#
#   scripts/image.sh build        # the image (make image); prints its size and the time taken
#   scripts/image.sh wheelhouse   # only the wheelhouse (make wheelhouse)
#   scripts/image.sh base         # only the local Debian base for buildah
#   scripts/image.sh source-hash  # the fingerprint of the build's inputs (the image's label visionops.source)
#
# Settings (environment):
#   IMAGE        tag to build; default ghcr.io/visionops/visionops:<version in pyproject.toml>
#   ENGINE       docker | buildah; default: docker if `docker info` answers, else buildah
#   TORCH        cuda (default) | cpu: the torch build (see the Dockerfile)
#   BASE_IMAGE   the base; default: the Dockerfile's (docker), a debootstrapped bookworm (buildah)
#   WHEELHOUSE   a directory of wheels to install from offline; default: none with docker, and with buildah
#                $IMAGE_CACHE/wheelhouse-$TORCH, made from the host's pip (and its cache) when missing or stale
#   IMAGE_CACHE  where the wheelhouse and the base's root filesystem live (outside the repository);
#                default ~/.cache/visionops-image
#   LAYERS       1: cache build steps between builds (buildah --layers); costs a full copy per step with vfs
#   FORCE        1: build even if the image was built from the same inputs (its label visionops.source)
#   PYTHON       the host Python 3.11 that builds the wheelhouse; default python3
#   DEBIAN_MIRROR  for debootstrap; default http://deb.debian.org/debian
#
# buildah runs as root with the vfs storage driver and chroot isolation: no daemon, no overlay or user
# namespaces needed (docs/kubernetes.md, "Build without Docker").
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=${IMAGE:-ghcr.io/visionops/visionops:$VERSION}
TORCH=${TORCH:-cuda}
IMAGE_CACHE=${IMAGE_CACHE:-$HOME/.cache/visionops-image}
PYTHON=${PYTHON:-python3}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/visionops-base:bookworm
#: The working container tests/test_image.py mounts the image's root filesystem from (stale after a build).
TEST_CONTAINER=visionops-image-test
BUILDAH=(buildah --storage-driver vfs)

die() {
    echo "image.sh: $*" >&2
    exit 1
}

# docker if an engine answers, else buildah; ENGINE overrides.
pick_engine() {
    if [[ -n ${ENGINE:-} ]]; then
        echo "$ENGINE"
    elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        echo docker
    elif command -v buildah >/dev/null; then
        echo buildah
    else
        die "neither a Docker engine nor buildah found: install Docker, or (Debian, as root) apt-get install buildah debootstrap"
    fi
}

# The fingerprint of what the wheelhouse must satisfy: rebuilt when constraints or dependencies change.
wheelhouse_key() {
    cat constraints.txt pyproject.toml | sha256sum | cut -c1-16
}

# Wheels for torch, torchvision, the project's dependencies and its build backend, made by the host's pip
# (so a wheel already in pip's cache is not downloaded again). The project's own wheel is left out: the
# image installs the project from the source in the build context.
make_wheelhouse() {
    local dir=$1 key
    key=$(wheelhouse_key)
    if [[ -f $dir/.key && $(cat "$dir/.key") == "$key" ]]; then
        echo "wheelhouse $dir is up to date ($(du -sh "$dir" | cut -f1))"
        return
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$PYTHON is not Python 3.11: its wheels would not match the image's Python (set PYTHON)"
    local index=()
    [[ $TORCH == cpu ]] && index=(--index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
    mkdir -p "$dir"
    echo "wheelhouse $dir: pip wheel torch torchvision ($TORCH), then the project's dependencies"
    "$PYTHON" -m pip wheel -q --progress-bar off -w "$dir" --find-links "$dir" "${index[@]}" \
        -c constraints.txt torch torchvision
    "$PYTHON" -m pip wheel -q --progress-bar off -w "$dir" --find-links "$dir" \
        -c constraints.txt . pip setuptools wheel
    rm -f "$dir"/visionops-*.whl
    echo "$key" >"$dir/.key"
    echo "wheelhouse $dir: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
}

# A local base image for buildah: Debian bookworm (debootstrap minbase) with Debian's Python 3.11 and venv.
make_base() {
    if "${BUILDAH[@]}" inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        echo "base $LOCAL_BASE exists"
        return
    fi
    [[ $(id -u) == 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
    local rootfs=$IMAGE_CACHE/rootfs-bookworm ctr mnt
    if [[ ! -x $rootfs/usr/bin/python3 ]]; then
        rm -rf "$rootfs"
        echo "base: debootstrap bookworm into $rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$DEBIAN_MIRROR" >"$IMAGE_CACHE/debootstrap.log" 2>&1 ||
            die "debootstrap failed: see $IMAGE_CACHE/debootstrap.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    fi
    ctr=$("${BUILDAH[@]}" from scratch)
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    cp -a "$rootfs"/. "$mnt"/
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd /bin/bash "$ctr"
    "${BUILDAH[@]}" commit -q "$ctr" "$LOCAL_BASE" >/dev/null
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    echo "base $LOCAL_BASE committed from $rootfs"
}

# A fingerprint of everything the build reads: the build settings, the Dockerfile and the build context. The
# image carries it as the label visionops.source, so a build from unchanged inputs is skipped and the image
# tests can tell a stale image. README.md is left out: the image uses it only as the package's description.
source_hash() {
    {
        echo "TORCH=$TORCH BASE_IMAGE=${BASE_IMAGE:-}"
        cat Dockerfile .dockerignore constraints.txt pyproject.toml
        # not the egg-info that `pip wheel .` (the wheelhouse) writes into components/
        find components -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 |
            sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

# The label visionops.source of the built image; empty when there is no image.
image_source() {
    if [[ $1 == docker ]]; then
        docker image inspect --format '{{index .Config.Labels "visionops.source"}}' "$IMAGE" 2>/dev/null || true
    else
        "${BUILDAH[@]}" inspect --type image --format '{{index .OCIv1.Config.Labels "visionops.source"}}' \
            "$IMAGE" 2>/dev/null || true
    fi
}

# Print the image's size as the engine reports it.
image_size() {
    if [[ $1 == docker ]]; then
        docker image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec --suffix=B
    else
        "${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -n1
    fi
}

build() {
    local engine start wheelhouse hash
    engine=$(pick_engine)
    hash=$(source_hash)
    if [[ ${FORCE:-0} != 1 && $(image_source "$engine") == "$hash" ]]; then
        echo "image $IMAGE ($engine) is up to date with the sources ($hash): $(image_size "$engine"); FORCE=1 rebuilds"
        return
    fi
    start=$(date +%s)
    local args=(--build-arg "TORCH=$TORCH" --label "visionops.source=$hash" -t "$IMAGE")
    [[ -n ${BASE_IMAGE:-} ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    case $engine in
    docker)
        wheelhouse=${WHEELHOUSE:-}
        if [[ -n $wheelhouse ]]; then
            make_wheelhouse "$wheelhouse"
            # a named build context needs BuildKit's buildx front end
            docker buildx build --load --build-context "wheelhouse=$wheelhouse" "${args[@]}" .
        else
            docker build "${args[@]}" .
        fi
        ;;
    buildah)
        [[ $(id -u) == 0 ]] || die "buildah with the vfs driver and chroot isolation runs as root here"
        wheelhouse=${WHEELHOUSE-$IMAGE_CACHE/wheelhouse-$TORCH}
        [[ -n $wheelhouse ]] && make_wheelhouse "$wheelhouse"
        if [[ -z ${BASE_IMAGE:-} ]]; then
            make_base
            args+=(--build-arg "BASE_IMAGE=$LOCAL_BASE")
        fi
        [[ -n $wheelhouse ]] && args+=(--build-context "wheelhouse=$wheelhouse")
        [[ ${LAYERS:-0} == 1 ]] && args+=(--layers)
        # --network host: only used when there is no wheelhouse (pip inside the build reaches the index)
        "${BUILDAH[@]}" bud --isolation chroot --network host "${args[@]}" .
        "${BUILDAH[@]}" rm "$TEST_CONTAINER" >/dev/null 2>&1 || true # its copy of the old image
        ;;
    *) die "ENGINE must be docker or buildah, not '$engine'" ;;
    esac
    local took=$(($(date +%s) - start))
    printf 'image %s (%s, TORCH=%s): %s, built in %dm%02ds\n' \
        "$IMAGE" "$engine" "$TORCH" "$(image_size "$engine")" $((took / 60)) $((took % 60))
}

mkdir -p "$IMAGE_CACHE"
case ${1:-build} in
build) build ;;
wheelhouse) make_wheelhouse "${WHEELHOUSE:-$IMAGE_CACHE/wheelhouse-$TORCH}" ;;
base) make_base ;;
source-hash) source_hash ;;
*) die "usage: scripts/image.sh [build|wheelhouse|base|source-hash]" ;;
esac
