#!/usr/bin/env bash
# bake-clean.sh ENV_FILE [--poweroff]: take from this node everything of its lab and cluster, so
# that `vagrant package` makes a box of it that any lab can boot (lab.bake).
#
# What stays: the installed runtime, cri-dockerd, kubeadm/kubelet/kubectl (kubelet enabled), the
# loaded images, the settings of prepare.sh and runtime.sh, the pinned downloads under
# /var/cache/dslab and the stamps under /var/lib/dslab that let the scripts see all that is
# done. What goes, as vagrant-libvirt's virt-sysprep defaults and the box builders do it:
# the kubeadm state (`kubeadm reset`, /etc/kubernetes, /var/lib/kubelet, /var/lib/etcd, the
# CNI configuration with its cluster credentials), the lab's files (/opt/dslab: node.env,
# kubeadm configs with their tokens) and kubeadm markers, the node's IPv6 address and name,
# the machine-id, the random seed and yum's UUID, the ssh host keys (made again at the next boot
# by a one-shot unit, as Debian, unlike EL, does not), the packages the package managers kept
# (their repository metadata stays), logs, cloud-init's instance state, DHCP leases and shell
# history. Every removal checks first: a second run changes nothing.
#
# Reads: CRI_SOCKET NODE_IPV4 (from ENV_FILE). Paths are taken below DSLAB_ROOT (default empty).
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

KEYGEN_UNIT=dslab-ssh-host-keys.service

# remove PATH...: remove each (file or directory) that exists below DSLAB_ROOT.
remove() {
  local path
  for path in "$@"; do
    [[ $path == /?* ]] || die "remove: $path is not an absolute path"
    [[ -e $DSLAB_ROOT$path || -L $DSLAB_ROOT$path ]] || continue
    log "remove $path"
    rm -rf -- "$DSLAB_ROOT$path"
  done
}

# empty_dir DIR: remove what DIR holds, keeping DIR.
empty_dir() {
  local entry
  [[ -d $DSLAB_ROOT$1 ]] || return 0
  for entry in "$DSLAB_ROOT$1"/* "$DSLAB_ROOT$1"/.[!.]*; do
    [[ -e $entry || -L $entry ]] || continue
    remove "${entry#"$DSLAB_ROOT"}"
  done
}

cluster_state() {
  local f state=0
  step "kubeadm state"
  for f in /etc/kubernetes/admin.conf /etc/kubernetes/kubelet.conf /etc/kubernetes/bootstrap-kubelet.conf \
    /etc/kubernetes/pki /var/lib/kubelet/config.yaml /var/lib/etcd/member \
    /var/lib/dslab/kubeadm-init.done /var/lib/dslab/kubeadm-join.done; do
    if [[ -e $DSLAB_ROOT$f ]]; then state=1; fi
  done
  if ((state)) && command -v kubeadm >/dev/null 2>&1; then
    need CRI_SOCKET
    run kubeadm reset -f --cri-socket "$CRI_SOCKET"
  fi
  empty_dir /etc/kubernetes
  empty_dir /var/lib/kubelet
  empty_dir /var/lib/etcd
  empty_dir /etc/cni/net.d
  empty_dir /var/lib/cni
  empty_dir /var/lib/calico
  remove /root/.kube /var/lib/dslab/kubeadm-init.done /var/lib/dslab/kubeadm-join.done
}

lab_files() {
  step "lab files"
  remove /opt/dslab /var/cache/dslab/images /var/cache/dslab/packages
}

# The NIC holding NODE_IPV4, as network.sh finds it; empty when none does.
lab_interface() {
  ip -o -4 addr show 2>/dev/null | awk -v a="${NODE_IPV4:-}" '{split($4, p, "/"); if (p[1] == a && !n++) print $2}'
}

node_identity() {
  local family=$1 f ifname uuid method content
  step "node address and name"
  for f in "$DSLAB_ROOT"/etc/network/interfaces.d/dslab-ipv6-*; do
    if [[ -e $f ]]; then remove "${f#"$DSLAB_ROOT"}"; fi
  done
  for f in "$DSLAB_ROOT"/etc/sysconfig/network-scripts/ifcfg-*; do
    [[ -f $f ]] || continue
    grep -Eq '^(IPV6ADDR|IPV6_DEFAULTGW)=' "$f" || continue
    content=$(grep -Ev '^(IPV6ADDR|IPV6_DEFAULTGW)=' "$f")
    if write_file "${f#"$DSLAB_ROOT"}" 0644 <<<"$content"; then :; fi
  done
  if [[ $family == el9 ]] && command -v nmcli >/dev/null 2>&1; then
    ifname=$(lab_interface || true)
    ifname=${ifname%%@*}
    uuid=""
    [[ -z $ifname ]] || uuid=$(nmcli -g GENERAL.CON-UUID device show "$ifname" 2>/dev/null || true)
    if [[ -n $uuid ]]; then
      method=$(nmcli -g ipv6.method connection show "$uuid" 2>/dev/null || true)
      # Not reapplied: the address stays until the node powers off, and the box boots without it.
      if [[ $method == manual ]]; then
        run nmcli connection modify "$uuid" ipv6.method auto ipv6.addresses "" ipv6.gateway ""
      fi
    fi
  fi
  if [[ $(tr -d '[:space:]' <"$DSLAB_ROOT/etc/hostname" 2>/dev/null || true) != localhost ]]; then
    if write_file /etc/hostname 0644 <<<"localhost"; then :; fi
  fi
}

machine_identity() {
  step "machine-id"
  # Empty, not removed: systemd makes a new one at the next boot (machine-id(5)).
  if [[ -s $DSLAB_ROOT/etc/machine-id ]]; then
    log "truncate /etc/machine-id"
    : >"$DSLAB_ROOT/etc/machine-id"
  fi
  if [[ ! -L $DSLAB_ROOT/var/lib/dbus/machine-id ]]; then remove /var/lib/dbus/machine-id; fi
  # systemd-random-seed credits a seed marked creditable unless the boot is a first boot, which an
  # empty machine-id is not (systemd src/random-seed/random-seed.c, src/core/main.c): every node
  # made from the box would start from this one. Its unit is stopped first, as it saves a new
  # seed when it stops, at the latest at poweroff. yum makes a new UUID when it finds none.
  if unit_active systemd-random-seed.service; then run systemctl stop systemd-random-seed.service; fi
  remove /var/lib/systemd/random-seed /var/lib/yum/uuid
}

# The packages cache-packages.sh had the package managers keep: everything in the box is installed
# already, and a box that carried them would double their bytes in every bundle.
kept_packages() {
  local f count=0
  step "kept packages"
  for f in "$DSLAB_ROOT"/var/cache/apt/archives/*.deb "$DSLAB_ROOT"/var/cache/dnf/*/packages/*.rpm \
    "$DSLAB_ROOT"/var/cache/yum/*/*/*/packages/*.rpm; do
    [[ -f $f ]] || continue
    rm -f -- "$f"
    count=$((count + 1))
  done
  if ((count)); then log "removed $count kept packages"; fi
}

ssh_host_keys() {
  local f
  step "ssh host keys"
  if write_file "/etc/systemd/system/$KEYGEN_UNIT" 0644 <<'EOF'; then :; fi
[Unit]
Description=ssh host keys of a new machine (dslab)
Before=ssh.service sshd.service ssh.socket
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
EOF
  unit_enabled "$KEYGEN_UNIT" || run systemctl enable "$KEYGEN_UNIT"
  for f in "$DSLAB_ROOT"/etc/ssh/ssh_host_*; do
    if [[ -e $f ]]; then remove "${f#"$DSLAB_ROOT"}"; fi
  done
}

logs_and_history() {
  local f
  step "logs"
  # The journal's files go too; journald writes on to the removed files until the node powers off,
  # and makes new ones (under the new machine-id) at the next boot.
  while IFS= read -r -d '' f; do
    remove "${f#"$DSLAB_ROOT"}"
  done < <(find "$DSLAB_ROOT/var/log" -path "$DSLAB_ROOT/var/log/journal/*" -type f -print0 -o -type f \
    \( -name '*.gz' -o -name '*.[0-9]' -o -name '*-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]' \) -print0 2>/dev/null)
  while IFS= read -r -d '' f; do
    log "truncate ${f#"$DSLAB_ROOT"}"
    : >"$f"
  done < <(find "$DSLAB_ROOT/var/log" -path "$DSLAB_ROOT/var/log/journal" -prune -o -type f -size +0 -print0 2>/dev/null)
  step "cloud-init, leases, history"
  if [[ -d $DSLAB_ROOT/var/lib/cloud/instances ]]; then
    if command -v cloud-init >/dev/null 2>&1; then
      run cloud-init clean --logs
    else
      remove /var/lib/cloud/instances /var/lib/cloud/instance /var/lib/cloud/data
    fi
  fi
  for f in "$DSLAB_ROOT"/var/lib/dhclient/* "$DSLAB_ROOT"/var/lib/dhcp/*.leases \
    "$DSLAB_ROOT"/var/lib/NetworkManager/*.lease "$DSLAB_ROOT"/var/lib/NetworkManager/dhclient-* \
    "$DSLAB_ROOT"/root/.bash_history "$DSLAB_ROOT"/home/*/.bash_history; do
    if [[ -e $f ]]; then remove "${f#"$DSLAB_ROOT"}"; fi
  done
}

# The vagrant user's authorized_keys hold only LOGIN_KEY, Vagrant's insecure public key (put there
# by lab.bake from the Vagrant installation): a lab made from the box logs in with Vagrant's
# insecure key and replaces it with a key of its own (config.ssh.insert_key), as with any public
# box. No key of this lab stays in the box, and lab.bake packages none with it.
LOGIN_KEY=/opt/dslab/login.pub
AUTHORIZED=/home/vagrant/.ssh/authorized_keys

login_key() {
  step "login key"
  [[ -s $DSLAB_ROOT$LOGIN_KEY ]] || die "$LOGIN_KEY is missing: lab.bake puts Vagrant's insecure public key there"
  # every line a public key: no option (command=...), nothing else
  if grep -vqE '^(ssh-(rsa|ed25519)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( [A-Za-z0-9@._ -]*)?$' \
    "$DSLAB_ROOT$LOGIN_KEY"; then
    die "$LOGIN_KEY is not an ssh public key (one key a line, no options)"
  fi
  [[ -d $DSLAB_ROOT$(dirname "$AUTHORIZED") ]] || die "$(dirname "$AUTHORIZED") is missing: the box has no vagrant user"
  if write_file "$AUTHORIZED" 0600 <"$DSLAB_ROOT$LOGIN_KEY"; then
    run chown --reference="$DSLAB_ROOT$(dirname "$AUTHORIZED")" "$DSLAB_ROOT$AUTHORIZED"
  fi
}

main() {
  local family poweroff=0
  load_env "${1:-}"
  if [[ ${2:-} == --poweroff ]]; then poweroff=1; fi
  step "detect"
  family=$(os_family)
  cluster_state
  node_identity "$family"
  login_key
  lab_files
  machine_identity
  kept_packages
  logs_and_history
  ssh_host_keys
  step "done"
  log "nothing of the lab or its cluster is left on this node"
  if ((poweroff)); then
    sync
    # --no-block: this command returns (and ssh with it) before the shutdown begins.
    run systemctl --no-block poweroff
  fi
}

main "$@"
