#!/usr/bin/env bash
# Shared functions of the dslab node scripts. Sourced, never run.
#
# Every script: reads its settings from the environment (or from the env file given as
# its first argument, written by lab.nodeenv), checks before it acts, and stops at the
# first failing command with a message naming the step.
#
# Test seam: DSLAB_ROOT (default empty) prefixes every file the scripts read or write
# (/etc, /proc, /sys, /usr, /var, /opt); commands are found on PATH.
set -euo pipefail

DSLAB_ROOT=${DSLAB_ROOT:-}
DSLAB_STEP=${DSLAB_STEP:-start}
DSLAB_SCRIPT=$(basename "${0:-dslab}")
export DSLAB_HERE
DSLAB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'dslab: %s: %s\n' "$DSLAB_SCRIPT" "$*" >&2; }
warn() { printf 'dslab: %s: warning: %s\n' "$DSLAB_SCRIPT" "$*" >&2; }

# die MESSAGE: stop the script, naming the current step.
die() {
  printf "dslab: step '%s' failed: %s\n" "$DSLAB_STEP" "$*" >&2
  exit 1
}

# Backstop for a failing command that did not go through `run`.
_dslab_on_err() {
  local rc=$1 cmd=$2
  printf "dslab: step '%s' failed: %s (exit %s)\n" "$DSLAB_STEP" "$cmd" "$rc" >&2
  exit "$rc"
}
set -E
trap '_dslab_on_err "$?" "$BASH_COMMAND"' ERR

# step NAME: start a named step (used in failure messages).
step() {
  DSLAB_STEP=$1
  log "== $1"
}

# run CMD ARGS...: run a changing command; a failure stops the script naming the step.
run() {
  log "+ $*"
  local rc=0
  "$@" || rc=$?
  if ((rc != 0)); then
    die "$* (exit $rc)"
  fi
}

# load_env [FILE]: source the env file written by lab.nodeenv, when given.
load_env() {
  if [[ $# -ge 1 && -n ${1:-} ]]; then
    [[ -r $1 ]] || die "env file $1 is not readable"
    # shellcheck disable=SC1090
    . "$1"
  fi
}

# need VAR...: every named variable must be set and non-empty.
need() {
  local var
  for var in "$@"; do
    [[ -n ${!var:-} ]] || die "variable $var is not set (pass it in the environment or the env file)"
  done
}

# os_family: el7, el9 or debian, from /etc/os-release.
os_family() {
  local file="$DSLAB_ROOT/etc/os-release" id="" like="" version=""
  [[ -r $file ]] || die "$file not found; cannot tell the OS"
  # shellcheck source=/dev/null
  read -r id version like < <(. "$file" && printf '%s %s %s\n' "${ID:-none}" "${VERSION_ID:-0}" "${ID_LIKE:-}")
  case "$id" in
    debian) printf 'debian\n'; return 0 ;;
  esac
  case " $id $like " in
    *" rhel "* | *" centos "* | *" fedora "*)
      case "${version%%.*}" in
        7) printf 'el7\n'; return 0 ;;
        9) printf 'el9\n'; return 0 ;;
      esac
      ;;
  esac
  die "unsupported OS: ID=$id VERSION_ID=$version (supported: CentOS 7, EL9, Debian 12)"
}

# write_file PATH MODE: write stdin to $DSLAB_ROOT/PATH only when the content differs.
# Returns 0 when it wrote, 1 when the file was already up to date.
write_file() {
  # Called as a condition (set -e is off there), so every failure is checked by hand.
  local path="$DSLAB_ROOT$1" mode=$2 tmp
  tmp=$(mktemp) || die "mktemp failed"
  cat >"$tmp" || die "cannot buffer the content of $1"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 1
  fi
  log "write $1"
  mkdir -p "$(dirname "$path")" || die "cannot create the directory of $1"
  install -m "$mode" "$tmp" "$path" || die "cannot write $1"
  rm -f "$tmp"
  return 0
}

# DSLAB_CURL: curl that speaks https only, on the first request (--proto =https) and on every
# redirect it follows (--proto-redir =https); "=" allows only the protocols listed (curl(1)).
# Every download of the node scripts goes through it, so none is served over plain http.
DSLAB_CURL=(curl --proto "=https" --proto-redir "=https")

# pgp_fingerprints FILE: the fingerprint (40 upper-case hex digits, one a line) of every primary
# public key in FILE, an ASCII-armoured OpenPGP key block. Uses coreutils only (gnupg is not on
# every node). The file must hold exactly one armour block and nothing else outside it, so apt and
# rpm read the same packets as this check does. A v4 fingerprint is the SHA-1 of 0x99, the two-octet
# length of the public-key packet's body, and that body (RFC 4880 12.2); packet headers as in 4.2.
# Returns 1 (with a reason on stderr) for anything else.
pgp_fingerprints() {
  local file=$1 bin i=0 n b tag len hdr body fp count=0
  local -a octets=()
  bin=$(mktemp) || return 1
  # Armour (RFC 4880 6.2): BEGIN line, header lines up to an empty line, base64 lines, an optional
  # "=" checksum line, END line.
  if ! awk '
    { sub(/\r$/, "") }
    /^-----BEGIN PGP PUBLIC KEY BLOCK-----$/ { if (state) exit 2; state = 1; next }
    state == 0 || state == 4 { if ($0 !~ /^[ \t]*$/) exit 3; next }
    state == 1 { if ($0 == "") state = 2; else if ($0 !~ /^[A-Za-z]+: /) exit 4; next }
    /^-----END PGP PUBLIC KEY BLOCK-----$/ { state = 4; next }
    state == 3 { exit 5 }
    /^=/ { state = 3; next }
    { if ($0 !~ /^[A-Za-z0-9+\/=]+$/) exit 6; print }
    END { if (state != 4) exit 7 }
  ' "$file" | base64 -d >"$bin" 2>/dev/null; then
    rm -f "$bin"
    printf 'not a single ASCII-armoured OpenPGP public key block\n' >&2
    return 1
  fi
  read -r -d '' -a octets < <(od -An -v -tu1 "$bin") || true
  n=${#octets[@]}
  while ((i < n)); do
    b=${octets[i]}
    if ((!(b & 0x80))); then
      printf 'no OpenPGP packet at octet %s\n' "$i" >&2
      rm -f "$bin"
      return 1
    fi
    len=-1
    if ((b & 0x40)); then # new-format header
      tag=$((b & 0x3f))
      b=${octets[i + 1]:-0}
      if ((b < 192)); then
        len=$b hdr=2
      elif ((b < 224)); then
        len=$((((b - 192) << 8) + ${octets[i + 2]:-0} + 192)) hdr=3
      elif ((b == 255)); then
        len=$(((${octets[i + 2]:-0} << 24) | (${octets[i + 3]:-0} << 16) | (${octets[i + 4]:-0} << 8) | ${octets[i + 5]:-0})) hdr=6
      fi # else a partial length, which no key packet may have
    else # old-format header
      tag=$(((b >> 2) & 0x0f))
      case $((b & 3)) in
        0) len=${octets[i + 1]:-0} hdr=2 ;;
        1) len=$(((${octets[i + 1]:-0} << 8) | ${octets[i + 2]:-0})) hdr=3 ;;
        2) len=$(((${octets[i + 1]:-0} << 24) | (${octets[i + 2]:-0} << 16) | (${octets[i + 3]:-0} << 8) | ${octets[i + 4]:-0})) hdr=5 ;;
      esac # 3: indeterminate length, likewise refused
    fi
    if ((len < 0 || i + hdr + len > n)); then
      printf 'an OpenPGP packet at octet %s has no usable length\n' "$i" >&2
      rm -f "$bin"
      return 1
    fi
    if ((tag == 6)); then # a primary public key
      body=$((i + hdr))
      if ((octets[body] != 4 || len > 65535)); then
        printf 'a primary key is not an OpenPGP version 4 key\n' >&2
        rm -f "$bin"
        return 1
      fi
      fp=$({ printf '%b' "\\x99\\x$(printf '%02x' $((len >> 8)))\\x$(printf '%02x' $((len & 255)))"
        tail -c +$((body + 1)) "$bin" | head -c "$len"; } | sha1sum | cut -d' ' -f1)
      printf '%s\n' "${fp^^}"
      count=$((count + 1))
    fi
    i=$((i + hdr + len))
  done
  rm -f "$bin"
  if ((count == 0)); then
    printf 'no public key in it\n' >&2
    return 1
  fi
}

# key_is_pinned FILE FINGERPRINT...: every primary key in FILE has one of the FINGERPRINTs (hex,
# spaces allowed); prints the reason when not.
key_is_pinned() {
  local file=$1 have fp f ok
  shift
  have=$(pgp_fingerprints "$file" 2>&1) || { printf '%s\n' "$have"; return 1; }
  for fp in $have; do
    ok=0
    for f in "$@"; do
      f=${f// /}
      if [[ $fp == "${f^^}" ]]; then ok=1; fi
    done
    if ((!ok)); then
      printf 'it holds key %s, which is not the pinned %s\n' "$fp" "$*"
      return 1
    fi
  done
}

# pinned_key URL PATH FINGERPRINT...: the ASCII-armoured OpenPGP key at URL, saved at PATH (mode
# 0644) only once every primary key in it has one of the pinned FINGERPRINTs. The download goes to a
# temporary file that is removed unless it passes, so no package manager ever sees an unchecked
# key. A PATH that already holds the pinned key is left alone (nothing is fetched); one that holds
# anything else is replaced by the checked download.
pinned_key() {
  local url=$1 path=$2 tmp why
  shift 2
  if [[ -f $DSLAB_ROOT$path ]] && key_is_pinned "$DSLAB_ROOT$path" "$@" >/dev/null; then
    return 0
  fi
  run install -m 0755 -d "$DSLAB_ROOT$(dirname "$path")"
  tmp=$(mktemp "$DSLAB_ROOT$path.part.XXXXXX") || die "cannot create a temporary file beside $path"
  log "+ ${DSLAB_CURL[*]} -fsSL --retry 5 -o $path $url"
  if ! "${DSLAB_CURL[@]}" -fsSL --retry 5 -o "$tmp" "$url"; then
    rm -f "$tmp"
    die "cannot download the signing key $url"
  fi
  if ! why=$(key_is_pinned "$tmp" "$@"); then
    rm -f "$tmp"
    die "the signing key from $url is refused: $why (nothing was installed at $path)"
  fi
  chmod 0644 "$tmp" || die "cannot make $path readable"
  mv -f "$tmp" "$DSLAB_ROOT$path" || die "cannot write $path"
  log "installed the pinned signing key $path"
}

# apt_asc_key URL PATH FINGERPRINT...: an apt repository's ASCII-armoured signing key at PATH
# (/etc/apt/keyrings/*.asc), checked against the pinned FINGERPRINTs (pinned_key). apt >= 1.4
# reads armoured keys from files named *.asc (apt-key(8), "Supported keyring files"), signed-by
# included; the key must be readable by the _apt user (sources.list(5), Signed-By): 0644, as
# Docker's Debian install page has it (install -m 0755 -d /etc/apt/keyrings, chmod a+r the key).
# Kept armoured, no gpg --dearmor (no gnupg needed on the node).
apt_asc_key() {
  local url=$1 path=$2
  shift 2
  [[ $path == *.asc ]] || die "apt reads an armoured key only from a file named *.asc (got $path)"
  pinned_key "$url" "$path" "$@"
}

# kubeadm_reset: undo a kubeadm init or join that did not complete, so it can run again.
# `kubeadm reset` leaves the CNI configuration behind (it says so): that goes too. CRI_SOCKET
# names the runtime: with docker-ce, containerd's socket exists beside cri-dockerd's, and
# kubeadm refuses to guess between several.
kubeadm_reset() {
  local f
  need CRI_SOCKET
  step "kubeadm reset"
  warn "$1; resetting the node before kubeadm runs again"
  run kubeadm reset -f --cri-socket "$CRI_SOCKET"
  for f in "$DSLAB_ROOT"/etc/cni/net.d/*; do
    [[ -e $f ]] || continue
    run rm -rf "$f"
  done
}

# mark_done PATH: record that a kubeadm phase completed (written only after it exited 0).
mark_done() {
  mkdir -p "$DSLAB_ROOT$(dirname "$1")" || die "cannot create the directory of $1"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$DSLAB_ROOT$1" || die "cannot write $1"
}

# unit_enabled UNIT / unit_active UNIT: systemd state checks (read-only).
unit_enabled() { systemctl is-enabled --quiet "$1" 2>/dev/null; }
unit_active() { systemctl is-active --quiet "$1" 2>/dev/null; }

# ensure_enabled UNIT / ensure_started UNIT: act only when needed.
ensure_enabled() { unit_enabled "$1" || run systemctl enable "$1"; }
ensure_started() { unit_active "$1" || run systemctl start "$1"; }

# ensure_running UNIT CHANGED: UNIT enabled and running; restarted only when it was already
# running and CHANGED is 1 (its configuration was just rewritten).
ensure_running() {
  ensure_enabled "$1"
  if unit_active "$1"; then
    if (($2)); then run systemctl restart "$1"; fi
  else
    run systemctl start "$1"
  fi
}

# pkg_installed FAMILY SPEC: true when the OS package SPEC is installed. On rpm, SPEC may be
# NAME, NAME-VERSION or NAME-VERSION-RELEASE (rpm -q matches all three).
pkg_installed() {
  case "$1" in
    debian) [[ $(dpkg-query -W -f='${Status}' "$2" 2>/dev/null || true) == "install ok installed" ]] ;;
    *) rpm -q --quiet "$2" 2>/dev/null ;;
  esac
}

# pkg_version FAMILY NAME: installed version (deb: upstream-revision), empty if absent.
# rpm -q prints "package NAME is not installed" on stdout for a missing one: never returned.
pkg_version() {
  pkg_installed "$1" "$2" || return 0
  case "$1" in
    debian) dpkg-query -W -f='${Version}' "$2" 2>/dev/null || true ;;
    *) rpm -q --qf '%{VERSION}' "$2" 2>/dev/null || true ;;
  esac
}

# pkg_install FAMILY ARG...: install with the OS's package manager (ARGs: packages and options).
# EL7's yum skips names it cannot find and still exits 0 (yum.conf(5): skip_missing_names_on_install,
# default True): it is told not to, and every package asked for is checked with rpm afterwards.
pkg_install() {
  local family=$1
  shift
  case "$family" in
    el7)
      run yum install -y --setopt=skip_missing_names_on_install=False "$@"
      pkg_check_installed el7 "$@"
      ;;
    el9) run dnf install -y "$@" ;;
    debian) run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ;;
  esac
}

# pkg_check_installed FAMILY ARG...: every package ARG (options skipped) is installed.
pkg_check_installed() {
  local family=$1 spec
  shift
  local missing=()
  for spec in "$@"; do
    [[ $spec == -* ]] && continue
    pkg_installed "$family" "$spec" || missing+=("$spec")
  done
  ((${#missing[@]} == 0)) || die "the package manager exited 0 but did not install: ${missing[*]} (not in the enabled repositories?)"
}

# ensure_packages FAMILY PACKAGE...: install only those not installed.
ensure_packages() {
  local family=$1 pkg
  shift
  local missing=()
  for pkg in "$@"; do
    pkg_installed "$family" "$pkg" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $family == debian ]]; then
    run env DEBIAN_FRONTEND=noninteractive apt-get update
  fi
  pkg_install "$family" "${missing[@]}"
}

