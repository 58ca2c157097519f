#!/usr/bin/env bash
# The operator's container image, built on this machine from the repository's Dockerfile.
#
# Public registries cannot be reached here, so the Dockerfile's base (the official python image)
# is replaced, through its PYTHON_IMAGE build argument, by a base made locally: Debian bookworm's
# own Python 3.11 (mmdebstrap from Debian's mirror). Anywhere else a plain
# `docker build -t localhost/tradewarden:VERSION .` uses the official image. buildah builds,
# its storage and the exported archives are cached under $TRADEWARDEN_CACHE (outside the clone).
#
#   image.sh base            build the local Python base unless cached (about 2 minutes)
#   image.sh build [DIR]     base, then the image from DIR (default: .) with layer caching; exports
#                            a docker archive for `load`; prints the image reference last
#   image.sh load            import the archive into the local node's containerd (like `kind load`)
#   image.sh inspect         the image's size, user, entrypoint and command as JSON
set -euo pipefail

CACHE=${TRADEWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tradewarden}
RUN=${TRADEWARDEN_RUN:-$CACHE/run}
STORE=$CACHE/containers
IMAGES=$CACHE/images
BASE_IMAGE=localhost/tradewarden-python:3.11-bookworm
REPOSITORY=${TRADEWARDEN_IMAGE_REPOSITORY:-localhost/tradewarden}
MIRROR=${TRADEWARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

LOG_NAME=image
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"


bah() { buildah --root "$STORE/storage" --runroot "$STORE/run" --storage-driver overlay "$@"; }

version() { sed -n 's/^version = "\(.*\)"/\1/p' "$1/pyproject.toml" | head -1; }

has_image() { bah images -q "$1" >/dev/null 2>&1; }

base() {
  need_apt buildah mmdebstrap
  has_image "$BASE_IMAGE" && return 0
  local tmp started=$SECONDS; tmp=$(mktemp -d)
  log "building the base $BASE_IMAGE: Debian bookworm's python3 (mmdebstrap, about 2 minutes)"
  # python-is-python3 and python3-venv: the Dockerfile runs `python -m venv`, as in the official image;
  # passwd: its groupadd/useradd; ca-certificates: exchanges are reached over TLS.
  mmdebstrap --variant=minbase --mode=root --format=tar \
    --include=python3,python3-venv,python-is-python3,passwd,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    bookworm "$tmp/rootfs.tar" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main" >"$tmp/mmdebstrap.log" 2>&1 \
    || { tail -20 "$tmp/mmdebstrap.log" >&2; rm -rf "$tmp"; log "mmdebstrap failed"; exit 1; }
  local c; c=$(bah from scratch)
  bah add "$c" "$tmp/rootfs.tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd '["python3"]' --label org.opencontainers.image.description="Debian bookworm with its Python 3.11" "$c"
  bah commit --rm -q "$c" "$BASE_IMAGE" >/dev/null
  rm -rf "$tmp"
  log "base built in $((SECONDS - started)) s"
}

build() {
  local ctx; ctx=$(cd "${1:-.}" && pwd)
  [ -f "$ctx/Dockerfile" ] || { log "no Dockerfile in $ctx"; exit 2; }
  base
  local ref started=$SECONDS; ref="$REPOSITORY:$(version "$ctx")"
  log "building $ref from $ctx/Dockerfile on $BASE_IMAGE (buildah)"
  # pip inside the build verifies TLS with this machine's CA bundle (which may hold a local egress CA),
  # bind-mounted for the RUN steps only: it is not copied into any layer.
  local ca=() b=/etc/ssl/certs/ca-certificates.crt
  [ -f "$b" ] && ca=(-v "$b:$b:ro")
  bah bud --layers --network host --isolation chroot "${ca[@]}" \
    --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$ref" -f "$ctx/Dockerfile" "$ctx" >"$STORE/build.log" 2>&1 \
    || { tail -30 "$STORE/build.log" >&2; log "build failed (log: $STORE/build.log)"; exit 1; }
  export_archive "$ref"
  log "built $ref in $((SECONDS - started)) s"
  echo "$ref"
}

# A docker archive of the image for containerd, rewritten only when the image changed.
export_archive() {
  local ref=$1 id; id=$(bah images -q --no-trunc "$ref" | head -1)
  mkdir -p "$IMAGES"
  if [ "$(cat "$IMAGES/tradewarden.id" 2>/dev/null)" != "$id" ] || [ ! -f "$IMAGES/tradewarden.tar" ]; then
    rm -f "$IMAGES/tradewarden.tar.new"
    bah push -q "$ref" "docker-archive:$IMAGES/tradewarden.tar.new:$ref" >/dev/null
    mv "$IMAGES/tradewarden.tar.new" "$IMAGES/tradewarden.tar"
    echo "$id" > "$IMAGES/tradewarden.id"
    echo "$ref" > "$IMAGES/tradewarden.ref"
  fi
}

load() {
  local sock=$RUN/node/containerd.sock ref id
  [ -f "$IMAGES/tradewarden.tar" ] || { log "no image archive: run \`image.sh build\` first"; exit 2; }
  [ -S "$sock" ] || { log "no local node containerd at $sock: run \`controlplane.sh node\` first"; exit 2; }
  ref=$(cat "$IMAGES/tradewarden.ref"); id=$(cat "$IMAGES/tradewarden.id")
  # Imported images carry the build's image ID as a label: import only when the node lacks this very image.
  if ctr -a "$sock" -n k8s.io images ls "name==$ref" | grep -q "tradewarden.io/image-id=$id"; then
    log "$ref already on the node"
  else
    ctr -a "$sock" -n k8s.io images import "$IMAGES/tradewarden.tar" >/dev/null
    ctr -a "$sock" -n k8s.io images label "$ref" "tradewarden.io/image-id=$id" >/dev/null
    log "$ref imported into the node's containerd"
  fi
  echo "$ref"
}

# The image's configuration (user, entrypoint, command, ...) and the exported archive's size, as JSON.
inspect() {
  local ref=${1:-$(cat "$IMAGES/tradewarden.ref")}
  bah inspect --type image "$ref" | python3 -c '
import json, os, sys
cfg = json.load(sys.stdin)["OCIv1"]["config"]
archive = sys.argv[2]
print(json.dumps({"ref": sys.argv[1], "user": cfg.get("User"), "entrypoint": cfg.get("Entrypoint"),
                  "cmd": cfg.get("Cmd"), "env": cfg.get("Env"), "exposed_ports": sorted(cfg.get("ExposedPorts") or {}),
                  "archive_bytes": os.path.getsize(archive) if os.path.exists(archive) else None}))' "$ref" "$IMAGES/tradewarden.tar"
}

case "${1:-}" in
  base) base ;;
  build) build "${2:-.}" ;;
  load) load ;;
  inspect) inspect "${2:-}" ;;
  *) sed -n 2,15p "$0"; exit 2 ;;
esac
