#!/usr/bin/env bash
# prepare.sh [ENV_FILE]: what kubeadm and kube-proxy (IPVS mode) need of the node.
#
# Swap off for good, SELinux permissive (EL), firewalld off, no background package metadata
# refresh, kernel modules, sysctls, and
# the tools kubeadm's preflight and kube-proxy use; the box's passwords locked and ssh
# password login off. Every action checks first.
#
# Reads: KUBE_PROXY_MODE (default ipvs), CENTOS_VAULT_URL (EL7 only)
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

swap_off() {
  local content
  step "swap"
  if [[ -r $DSLAB_ROOT/proc/swaps ]] && (($(wc -l <"$DSLAB_ROOT/proc/swaps") > 1)); then
    run swapoff -a
  fi
  if [[ -f $DSLAB_ROOT/etc/fstab ]]; then
    content=$(awk '!/^[[:space:]]*#/ && $3 == "swap" { print "#" $0 " # dslab: swap off for kubelet"; next } { print }' "$DSLAB_ROOT/etc/fstab")
    if write_file /etc/fstab 0644 <<<"$content"; then :; fi
  fi
}

# Debian and EL9: swap units (including zram) must not come back at boot.
mask_swap_units() {
  local unit
  step "swap units"
  while read -r unit _; do
    [[ -n $unit ]] || continue
    [[ $(systemctl is-enabled "$unit" 2>/dev/null || true) == masked ]] || run systemctl mask "$unit"
  done < <(
    systemctl list-units --type=swap --all --plain --no-legend 2>/dev/null || true
    systemctl list-unit-files --plain --no-legend 'systemd-zram-setup@*' 2>/dev/null | sed 's/@\.service/@zram0.service/' || true
  )
}

selinux_permissive() {
  local content
  step "selinux"
  if command -v getenforce >/dev/null 2>&1 && [[ $(getenforce) == Enforcing ]]; then
    run setenforce 0
  fi
  if [[ -f $DSLAB_ROOT/etc/selinux/config ]]; then
    content=$(sed -E 's/^SELINUX=enforcing[[:space:]]*$/SELINUX=permissive/' "$DSLAB_ROOT/etc/selinux/config")
    if write_file /etc/selinux/config 0644 <<<"$content"; then :; fi
  fi
}

# firewalld is stopped and disabled rather than opened port by port: the lab network is
# private, and kube-proxy (IPVS) and Calico manage the node's packet filter themselves.
# The README documents this.
firewalld_off() {
  step "firewalld"
  if unit_active firewalld; then
    run systemctl stop firewalld
  fi
  if unit_enabled firewalld; then
    run systemctl disable firewalld
  fi
}

# CentOS 7 is EOL: its mirrorlist is gone, so the base repos are pointed at the vault.
centos_vault() {
  local f content
  step "centos vault repos"
  [[ -n ${CENTOS_VAULT_URL:-} ]] || die "CENTOS_VAULT_URL is not set (needed on CentOS 7)"
  for f in "$DSLAB_ROOT"/etc/yum.repos.d/CentOS-*.repo; do
    [[ -f $f ]] || continue
    grep -q '^mirrorlist=http://mirrorlist.centos.org' "$f" || continue
    content=$(sed -E -e 's|^mirrorlist=|#mirrorlist=|' \
      -e "s|^#?baseurl=http://mirror.centos.org/centos/\\\$releasever|baseurl=${CENTOS_VAULT_URL}|" "$f")
    if write_file "${f#"$DSLAB_ROOT"}" 0644 <<<"$content"; then :; fi
  done
}

# Package names and where each was seen for its OS: provision/PACKAGES.md.
packages() {
  local family=$1 pkgs=()
  step "packages"
  case "$family" in
    el7) pkgs=(ipset ipvsadm conntrack-tools socat ethtool iptables ebtables tar) ;;
    # On EL9 iptables-nft provides the ebtables command (and the "ebtables" capability), and tc
    # comes in its own package: kubeadm's preflight warns without it (FileExisting-tc).
    el9) pkgs=(ipset ipvsadm conntrack-tools socat ethtool iptables-nft iproute-tc tar) ;;
    debian) pkgs=(ipset ipvsadm ca-certificates conntrack socat ethtool iptables ebtables tar) ;;
  esac
  # The curl command, whichever package brought it: EL9 images carry curl-minimal, where
  # `rpm -q curl` says missing and installing curl conflicts with curl-minimal.
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  ensure_packages "$family" "${pkgs[@]}"
}

# NetworkManager leaves Calico's interfaces alone: the file Calico's documentation gives
# (tigera/docs, calico 3.31 operations/troubleshoot/troubleshooting.mdx, "Configure
# NetworkManager"), applied with `systemctl reload NetworkManager` (as Red Hat documents for
# conf.d changes that mark devices unmanaged).
networkmanager_calico() {
  step "networkmanager"
  unit_active NetworkManager || return 0
  if write_file /etc/NetworkManager/conf.d/calico.conf 0644 <<'EOF'; then run systemctl reload NetworkManager; fi
[keyfile]
unmanaged-devices=interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico;interface-name:vxlan-v6.calico;interface-name:wireguard.cali;interface-name:wg-v6.cali
EOF
}

# kernel_at_least MAJOR MINOR
kernel_at_least() {
  local release major minor
  release=$(cat "$DSLAB_ROOT/proc/sys/kernel/osrelease")
  major=${release%%.*}
  minor=${release#*.}
  minor=${minor%%.*}
  ((major > $1 || (major == $1 && minor >= $2)))
}

module_loaded() {
  [[ -d $DSLAB_ROOT/sys/module/$1 ]] ||
    awk -v m="$1" '$1 == m { f = 1 } END { exit !f }' "$DSLAB_ROOT/proc/modules"
}

kernel_modules() {
  local m modules=(br_netfilter overlay)
  step "kernel modules"
  if [[ ${KUBE_PROXY_MODE:-ipvs} == ipvs ]]; then
    modules+=(ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh)
  fi
  # nf_conntrack_ipv4 was merged into nf_conntrack in Linux 4.19 (CentOS 7 runs 3.10).
  if kernel_at_least 4 19; then modules+=(nf_conntrack); else modules+=(nf_conntrack_ipv4); fi
  for m in "${modules[@]}"; do
    module_loaded "$m" || run modprobe "$m"
  done
  if write_file /etc/modules-load.d/dslab.conf 0644 < <(
    echo "# dslab: kernel modules for kubelet and kube-proxy"
    printf '%s\n' "${modules[@]}"
  ); then :; fi
}

sysctls() {
  local key value have
  local -a settings=(
    net.bridge.bridge-nf-call-iptables=1
    net.bridge.bridge-nf-call-ip6tables=1
    net.ipv4.ip_forward=1
    net.ipv6.conf.all.forwarding=1
  )
  step "sysctl"
  if write_file /etc/sysctl.d/90-dslab.conf 0644 < <(
    echo "# dslab: bridged traffic through iptables, forwarding for both families"
    printf '%s\n' "${settings[@]}"
  ); then :; fi
  for key in "${settings[@]}"; do
    value=${key#*=}
    key=${key%%=*}
    have=$(sysctl -n "$key" 2>/dev/null || true)
    [[ $have == "$value" ]] || run sysctl -w "$key=$value"
  done
}

# The box's vagrant and root passwords (often "vagrant") are locked: nobody logs in with them.
# Vagrant keeps logging in as vagrant with its key: sshd refuses a locked account ("!" in
# /etc/shadow) only when it runs without PAM (OpenSSH auth.c, allowed_user), and the boxes'
# sshd runs with UsePAM yes; where it does not (or cannot say), vagrant's password is left.
# `passwd -S` first: its second field is L (shadow-utils, Debian) or LK (EL) once locked.
password_locked() {
  local status
  status=$(passwd -S "$1" 2>/dev/null) || return 2
  read -r _ status _ <<<"$status"
  [[ $status == L || $status == LK ]]
}

sshd_uses_pam() {
  [[ -f $DSLAB_ROOT/etc/ssh/sshd_config ]] || return 0 # no OpenSSH server: no key login to keep
  sshd -T 2>/dev/null | grep -qix 'usepam yes'
}

lock_passwords() {
  local user rc
  step "lock passwords"
  # Without passwd every user would read as absent and keep the box's password.
  command -v passwd >/dev/null 2>&1 || die "passwd not found: cannot check or lock the box's passwords"
  for user in root vagrant; do
    rc=0
    password_locked "$user" || rc=$?
    case $rc in
      0) continue ;;
      2)
        log "no user $user"
        continue
        ;;
    esac
    if [[ $user == vagrant ]] && ! sshd_uses_pam; then
      warn "sshd does not run with PAM: locking vagrant's password would refuse Vagrant's key login; left as it is"
      continue
    fi
    run usermod -L "$user"
  done
}

# ssh password login off. sshd takes the first value it reads for a keyword; EL9 and Debian 12
# include sshd_config.d/*.conf at the top of sshd_config (in name order, so 01- comes before a
# 50-cloud-init.conf that allows passwords). EL7's OpenSSH 7.4 has no Include: the settings go
# at the top of sshd_config itself, between dslab's marker lines. Keyboard-interactive goes too
# (with PAM it asks for the password); 7.4 knows it as ChallengeResponseAuthentication only.
# Checked with `sshd -t` before sshd reloads, and only when something changed.
ssh_no_passwords() {
  local family=$1 main=$DSLAB_ROOT/etc/ssh/sshd_config changed=1 content unit=sshd
  step "ssh password login"
  if [[ ! -f $main ]]; then
    log "no sshd_config: no OpenSSH server"
    return 0
  fi
  if grep -Eqi '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf([[:space:]]|$)' "$main"; then
    if write_file /etc/ssh/sshd_config.d/01-dslab.conf 0600 <<'EOF'; then changed=0; fi
# dslab: key login only
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
  else
    content=$(
      printf '%s\n' "# dslab: begin (key login only)" "PasswordAuthentication no" \
        "ChallengeResponseAuthentication no" "# dslab: end"
      awk '/^# dslab: begin/ { skip = 1; next } skip && /^# dslab: end/ { skip = 0; next } !skip' "$main"
    )
    if write_file /etc/ssh/sshd_config 0600 <<<"$content"; then changed=0; fi
  fi
  ((changed == 0)) || return 0
  run sshd -t
  if [[ $family == debian ]]; then unit=ssh; fi
  if unit_active "$unit"; then
    run systemctl reload "$unit"
  fi
}

# The package managers' timers refresh repository metadata in the background (dnf-makecache.timer
# and yum-makecache.timer on EL, apt-daily and apt-daily-upgrade on Debian): a node then reaches
# the internet only when a step installs something, and a lab from the host's cache not at all.
PACKAGE_TIMERS=(dnf-makecache.timer yum-makecache.timer apt-daily.timer apt-daily-upgrade.timer)

package_timers_off() {
  local timer
  step "package timers"
  for timer in "${PACKAGE_TIMERS[@]}"; do
    if unit_active "$timer"; then
      run systemctl stop "$timer"
    fi
    if unit_enabled "$timer"; then
      run systemctl disable "$timer"
    fi
  done
}

main() {
  load_env "${1:-}"
  local family
  step "detect"
  family=$(os_family)
  log "OS family $family"
  swap_off
  if [[ $family != el7 ]]; then
    mask_swap_units
  fi
  if [[ $family == el* ]]; then
    selinux_permissive
  fi
  firewalld_off
  package_timers_off
  if [[ $family == el7 ]]; then
    centos_vault
  fi
  packages "$family"
  networkmanager_calico
  kernel_modules
  sysctls
  lock_passwords
  ssh_no_passwords "$family"
  step "done"
  log "node prepared"
}

main "$@"
