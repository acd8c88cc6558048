#!/usr/bin/env bash
# cache-images.sh ENV_FILE list | export REF DEST | load FILE REF: the node's side of the host's
# image cache, for RUNTIME (docker, or containerd in its CRI namespace k8s.io).
#
#   list           the runtime's image list with digests, as lab/images.py reads it
#   export REF D   writes image REF to the tarball D (moved into place only once complete) and
#                  prints "<sha256> <size>" of it, for the host to check what it copies
#   load FILE REF  loads the tarball FILE unless REF is there already, checks that REF is there
#                  afterwards, and removes FILE
#
# Paths are taken below DSLAB_ROOT (default empty). Reads: RUNTIME
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

CTR=(ctr -n k8s.io)
EXPORT_TMP=""

# A reference as the runtimes name images (no option, space or shell syntax in it).
check_ref() {
  [[ $1 =~ ^[a-z0-9][A-Za-z0-9._/:@-]*$ ]] || die "not an image reference: $1"
}

image_present() {
  case "$RUNTIME" in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    # grep reads the whole list (no -q): an early exit would fail ctr with SIGPIPE under pipefail.
    containerd) "${CTR[@]}" images ls -q 2>/dev/null | grep -xF -- "$1" >/dev/null ;;
  esac
}

list_images() {
  case "$RUNTIME" in
    docker) docker image ls --digests --no-trunc --format '{{json .}}' ;;
    containerd) "${CTR[@]}" images ls ;;
  esac
}

export_image() {
  local ref=$1 dest="$DSLAB_ROOT$2" tmp
  step "export $ref"
  image_present "$ref" || die "image $ref is not on this node"
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.part.XXXXXX")
  EXPORT_TMP=$tmp
  # The name is read when the trap runs, never parsed as part of it.
  trap 'rm -f -- "$EXPORT_TMP"' EXIT
  # The tool's own output goes to stderr: stdout carries only the sum line (ctr 2.x prints progress).
  case "$RUNTIME" in
    docker) run docker save -o "$tmp" "$ref" >&2 ;;
    containerd) run "${CTR[@]}" images export "$tmp" "$ref" >&2 ;;
  esac
  [[ -s $tmp ]] || die "exporting $ref wrote nothing"
  mv -f "$tmp" "$dest"
  trap - EXIT
  printf '%s %s\n' "$(sha256sum "$dest" | cut -d' ' -f1)" "$(wc -c <"$dest" | tr -d ' ')"
}

load_image() {
  local file="$DSLAB_ROOT$1" ref=$2
  step "load $ref"
  if image_present "$ref"; then
    log "$ref is already there"
    rm -f "$file"
    return 0
  fi
  [[ -f $file ]] || die "$1 not found (copy it from the host's cache first)"
  case "$RUNTIME" in
    docker) run docker load -i "$file" >&2 ;;
    containerd) run "${CTR[@]}" images import "$file" >&2 ;;
  esac
  image_present "$ref" || die "loading $1 did not give $ref"
  rm -f "$file"
  log "loaded $ref from the host's cache"
}

main() {
  load_env "${1:-}"
  need RUNTIME
  [[ $RUNTIME == docker || $RUNTIME == containerd ]] || die "RUNTIME must be docker or containerd (got $RUNTIME)"
  case "${2:-}" in
    list) list_images ;;
    export)
      [[ $# -eq 4 ]] || die "usage: cache-images.sh ENV_FILE export REF DEST"
      check_ref "$3"
      export_image "$3" "$4"
      ;;
    load)
      [[ $# -eq 4 ]] || die "usage: cache-images.sh ENV_FILE load FILE REF"
      check_ref "$4"
      load_image "$3" "$4"
      ;;
    *) die "usage: cache-images.sh ENV_FILE list | export REF DEST | load FILE REF" ;;
  esac
}

main "$@"
