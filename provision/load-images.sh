#!/usr/bin/env bash
# load-images.sh ARCHIVE MEMBER...: load the `docker save` tarballs MEMBER of the release
# ARCHIVE (a .tgz already fetched and checked by fetch.sh) into Docker, so the kubelet finds
# the images and pulls nothing (Calico 3.11's images come with its release tarball; Docker
# Hub allows an address 10 anonymous pulls an hour).
#
# A member is loaded once: what `docker load` reported is kept in a stamp, and a later run
# only checks that every image named there is still present.
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

STAMPS=/var/lib/dslab/images

loaded_already() {
  local stamp=$1 ref
  [[ -s $DSLAB_ROOT$stamp ]] || return 1
  while read -r ref; do
    [[ -n $ref ]] || continue
    docker image inspect "$ref" >/dev/null 2>&1 || return 1
  done <"$DSLAB_ROOT$stamp"
}

main() {
  [[ $# -ge 2 ]] || die "usage: load-images.sh ARCHIVE MEMBER..."
  local archive=$1 member stamp out
  shift
  [[ -f $DSLAB_ROOT$archive ]] || die "$archive not found (fetch it first)"
  mkdir -p "$DSLAB_ROOT$STAMPS"
  for member in "$@"; do
    step "load $(basename "$member")"
    stamp="$STAMPS/$(basename "$archive").$(basename "$member").refs"
    if loaded_already "$stamp"; then
      log "images of $member are loaded"
      continue
    fi
    log "+ tar -xzOf $archive $member | docker load"
    out=$(tar -xzOf "$DSLAB_ROOT$archive" "$member" | docker load) || die "cannot load $member of $archive"
    sed -n 's/^Loaded image: //p' <<<"$out" >"$DSLAB_ROOT$stamp"
    [[ -s $DSLAB_ROOT$stamp ]] || die "docker load named no image for $member"
    log "loaded $(tr '\n' ' ' <"$DSLAB_ROOT$stamp")"
  done
}

main "$@"
