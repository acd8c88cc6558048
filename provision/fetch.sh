#!/usr/bin/env bash
# fetch.sh URL SUM DEST [MIRROR...]: download URL to DEST, checked against SUM.
#
# MIRROR: further URLs of the same file, tried in turn when a download fails or its sum is
# wrong; the pinned SUM decides, whichever URL served the bytes.
# SUM is a sha256 (64 hex digits) or, where upstream publishes only that, a sha512
# (128 hex digits). DEST already there with the right sum: nothing is done. The download
# goes to a temporary file beside DEST and is moved into place only once verified.
# DEST is taken below DSLAB_ROOT (default empty).
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

fetch_main() {
  [[ $# -ge 3 ]] || die "usage: fetch.sh URL SHA256|SHA512 DEST [MIRROR...]"
  local url=$1 want=$2 dest="$DSLAB_ROOT$3" tool have tmp source failures=()
  local -a urls=("$1" "${@:4}")
  step "fetch $(basename "$3")"
  want=${want,,}
  case "${#want}" in
    64) tool=sha256sum ;;
    128) tool=sha512sum ;;
    *) die "no usable checksum for $url (got '${2}'; want 64 or 128 hex digits)" ;;
  esac
  [[ $want =~ ^[0-9a-f]+$ ]] || die "checksum for $url is not hexadecimal: $2"
  if [[ -f $dest ]]; then
    have=$("$tool" "$dest" | cut -d' ' -f1)
    if [[ $have == "$want" ]]; then
      log "$3 is up to date"
      return 0
    fi
  fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.part.XXXXXX")
  FETCH_TMP=$tmp
  trap 'rm -f -- "$FETCH_TMP"' EXIT
  for source in "${urls[@]}"; do
    log "+ curl $source"
    # A stalled transfer (under 1 KiB/s for two minutes) fails, so the next URL is tried;
    # https only, redirects included (DSLAB_CURL).
    if ! "${DSLAB_CURL[@]}" -fsSL --retry 5 --retry-delay 3 --speed-limit 1024 --speed-time 120 -o "$tmp" "$source"; then
      failures+=("$source: download failed")
      continue
    fi
    have=$("$tool" "$tmp" | cut -d' ' -f1)
    if [[ $have != "$want" ]]; then
      failures+=("checksum mismatch for $source: expected $want, got $have")
      continue
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$dest"
    trap - EXIT
    log "fetched $source -> $3"
    return 0
  done
  die "$(printf '%s; ' "${failures[@]}")no URL gave the pinned file"
}

fetch_main "$@"
