#!/usr/bin/env bash
# cache-packages.sh ENV_FILE os | keep | list | restore DIR: the node's side of the host's package cache.
#
#   os           the OS family the cache keeps this node's packages under (el7, el9, debian)
#   keep         the package manager keeps what it downloads: yum's and dnf's keepcache=1 in
#                [main] (yum.conf(5), dnf.conf(5); CentOS 7 ships keepcache=0, dnf defaults to
#                False), apt-get's APT::Keep-Downloaded-Packages "true" (its default; the `apt`
#                command's own default is false)
#   list         every kept package as "<os> <path> <size>", the path below the manager's cache
#                (EL: <repo cache>/packages/<file>.rpm, Debian: <file>.deb)
#   restore DIR  moves the packages under DIR (the same relative paths) into the manager's
#                cache, where it finds them before downloading; one already there stays. DIR is a
#                directory below /var/cache/dslab/, removed afterwards
#
# Paths are taken below DSLAB_ROOT (default empty).
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

# package_base FAMILY: the directory the package manager keeps packages under.
package_base() {
  case "$1" in
    el7) printf '/var/cache/yum/x86_64/7\n' ;; # cachedir=/var/cache/yum/$basearch/$releasever
    el9) printf '/var/cache/dnf\n' ;;
    debian) printf '/var/cache/apt/archives\n' ;;
  esac
}

# ini_main FILE KEY VALUE: KEY=VALUE in the [main] section of FILE (stdin -> stdout).
ini_main() {
  awk -v k="$1" -v v="$2" '
    function emit() { if (inmain && !done) { print k "=" v; done = 1 } }
    /^[[:space:]]*\[/ { emit(); inmain = ($0 ~ /^[[:space:]]*\[main\]/); seen = seen || inmain; print; next }
    inmain && $0 ~ "^[[:space:]]*" k "[[:space:]]*=" { if (!done) { print k "=" v; done = 1 }; next }
    { print }
    END { emit(); if (!seen) { print "[main]"; print k "=" v } }'
}

keep() {
  local family=$1 file content
  step "keep downloaded packages"
  case "$family" in
    el7 | el9)
      file=/etc/yum.conf
      [[ $family == el9 ]] && file=/etc/dnf/dnf.conf
      content=$(cat "$DSLAB_ROOT$file" 2>/dev/null || true)
      content=$(ini_main keepcache 1 <<<"$content")
      if write_file "$file" 0644 <<<"$content"; then :; fi
      ;;
    debian)
      if write_file /etc/apt/apt.conf.d/90dslab-keep-packages 0644 <<'EOF'; then :; fi
APT::Keep-Downloaded-Packages "true";
Binary::apt::APT::Keep-Downloaded-Packages "true";
EOF
      archive_cleaners
      ;;
  esac
}

# A hook that deletes the archives after every dpkg run (the docker-clean file of Debian's container
# images: DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb ..." }) empties the cache
# whatever Keep-Downloaded-Packages says; it is named, and left as the box has it.
archive_cleaners() {
  local f
  for f in "$DSLAB_ROOT"/etc/apt/apt.conf.d/*; do
    [[ -f $f ]] || continue
    if grep -Eq 'Post-Invoke.*rm .*/var/cache/apt/archives' "$f"; then
      warn "${f#"$DSLAB_ROOT"} removes downloaded packages after every install: none of them reach the host's cache"
    fi
  done
}

list() {
  local family=$1 base path rel
  base="$DSLAB_ROOT$(package_base "$family")"
  [[ -d $base ]] || return 0
  while IFS= read -r -d '' path; do
    rel=${path#"$base"/}
    printf '%s %s %s\n' "$family" "$rel" "$(wc -c <"$path" | tr -d ' ')"
  done < <(if [[ $family == debian ]]; then
    find "$base" -maxdepth 1 -type f -name '*.deb' -print0
  else
    find "$base" -mindepth 3 -maxdepth 3 -type f -path '*/packages/*.rpm' -print0
  fi | sort -z)
}

restore() {
  local family=$1 dir="$DSLAB_ROOT$2" base path rel target count=0
  step "restore kept packages"
  base="$DSLAB_ROOT$(package_base "$family")"
  # DIR is removed at the end: only a spool directory of dslab's is taken.
  [[ $2 == /var/cache/dslab/?* && $2 != *..* ]] || die "restore: $2 is not a directory below /var/cache/dslab/"
  [[ -d $dir ]] || die "$2 not found (copy the host's packages there first)"
  while IFS= read -r -d '' path; do
    rel=${path#"$dir"/}
    [[ $rel != *..* ]] || die "refusing the package path $rel"
    target="$base/$rel"
    if [[ -f $target && $(wc -c <"$target") == "$(wc -c <"$path")" ]]; then
      continue
    fi
    mkdir -p "$(dirname "$target")"
    mv -f "$path" "$target"
    count=$((count + 1))
  done < <(find "$dir" -type f \( -name '*.rpm' -o -name '*.deb' \) -print0 | sort -z)
  rm -rf "$dir"
  log "put $count packages from the host's cache in place"
}

main() {
  local family
  load_env "${1:-}"
  family=$(os_family)
  case "${2:-}" in
    os) printf '%s\n' "$family" ;;
    keep) keep "$family" ;;
    list) list "$family" ;;
    restore)
      [[ $# -eq 3 ]] || die "usage: cache-packages.sh ENV_FILE restore DIR"
      restore "$family" "$3"
      ;;
    *) die "usage: cache-packages.sh ENV_FILE os | keep | list | restore DIR" ;;
  esac
}

main "$@"
