#!/usr/bin/env bash
# network.sh [ENV_FILE]: the node's static IPv6 address, default IPv6 route and hostname.
#
# Runs once at machine creation (and is safe to re-run). The NIC on the lab network
# already has its planned IPv4 from a DHCP reservation; it is found by that address. The
# IPv4 configuration of the NIC is never touched.
#
# Reads: NODE_NAME NODE_IPV4 NODE_IPV6 NODE_IPV6_PREFIXLEN GATEWAY_IPV6 (from ENV_FILE)
# At machine creation Vagrant uploads lib.sh (named in DSLAB_LIB) and the node's env file
# (nodes/<name>.env), and runs this script with that file as its argument.
set -euo pipefail

# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

# The interface holding NODE_IPV4.
find_interface() {
  local line
  line=$(ip -o -4 addr show | awk -v a="$NODE_IPV4" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}')
  [[ -n $line ]] || die "no interface has the address $NODE_IPV4 (is the DHCP reservation in place?)"
  printf '%s\n' "${line%%@*}"
}

# sysctl_set KEY VALUE: set a kernel parameter only when it differs.
sysctl_set() {
  local have
  have=$(sysctl -n "$1" 2>/dev/null || true)
  [[ $have == "$2" ]] || run sysctl -w "$1=$2"
}

apply_runtime() {
  local ifname=$1 addr line
  step "ipv6 runtime ($ifname)"
  # RA and SLAAC off first, so no new dynamic address appears after the cleanup.
  sysctl_set "net.ipv6.conf.$ifname.accept_ra" 0
  sysctl_set "net.ipv6.conf.$ifname.autoconf" 0
  if ! ip -o -6 addr show dev "$ifname" | awk '{print $4}' | grep -qxF "$NODE_IPV6/$NODE_IPV6_PREFIXLEN"; then
    run ip -6 addr add "$NODE_IPV6/$NODE_IPV6_PREFIXLEN" dev "$ifname"
  fi
  # Remove SLAAC / DHCPv6 global addresses: only the planned one stays.
  while read -r line; do
    [[ -n $line ]] || continue
    addr=$(awk '{print $4}' <<<"$line")
    [[ $addr == "$NODE_IPV6/$NODE_IPV6_PREFIXLEN" ]] && continue
    if [[ $line == *" dynamic"* || $line == *" mngtmpaddr"* || $line == *" temporary"* ]]; then
      run ip -6 addr del "$addr" dev "$ifname"
    fi
  done < <(ip -o -6 addr show dev "$ifname" scope global)
  if ! ip -6 route show default | grep -q "via $GATEWAY_IPV6 dev $ifname\\b"; then
    run ip -6 route replace default via "$GATEWAY_IPV6" dev "$ifname"
  fi
}

persist_sysctl() {
  local ifname=$1
  step "ipv6 sysctl persistence"
  if write_file /etc/sysctl.d/80-dslab-network.conf 0644 <<EOF; then :; fi
# dslab: no router advertisements or SLAAC on the lab NIC; its IPv6 address is static.
net.ipv6.conf.$ifname.accept_ra = 0
net.ipv6.conf.$ifname.autoconf = 0
EOF
}

persist_debian() {
  local ifname=$1 f
  step "ipv6 persistence (ifupdown)"
  for f in "$DSLAB_ROOT/etc/network/interfaces" "$DSLAB_ROOT"/etc/network/interfaces.d/*; do
    [[ -f $f && $f != *"/dslab-ipv6-$ifname" ]] || continue
    if grep -Eq "^[[:space:]]*iface[[:space:]]+${ifname}[[:space:]]+inet6" "$f"; then
      warn "$f also has an inet6 stanza for $ifname; ifupdown will apply both"
    fi
  done
  if ! grep -Eq '^[[:space:]]*(source[[:space:]]+/etc/network/interfaces\.d/|source-directory[[:space:]]+(/etc/network/)?interfaces\.d)' \
    "$DSLAB_ROOT/etc/network/interfaces" 2>/dev/null; then
    warn "/etc/network/interfaces does not source /etc/network/interfaces.d; the IPv6 stanza will not persist"
  fi
  # interfaces(5), inet6 static: address (with /prefix), gateway, accept_ra, autoconf.
  # No dot in the name: interfaces.d is also read with source-directory (run-parts names).
  if write_file "/etc/network/interfaces.d/dslab-ipv6-$ifname" 0644 <<EOF; then :; fi
# dslab: static IPv6 of the lab NIC (the IPv4 side stays as configured elsewhere).
iface $ifname inet6 static
    address $NODE_IPV6/$NODE_IPV6_PREFIXLEN
    gateway $GATEWAY_IPV6
    accept_ra 0
    autoconf 0
EOF
}

persist_el9() {
  local ifname=$1 uuid current want
  step "ipv6 persistence (NetworkManager)"
  # By UUID: a connection name need not be unique, its UUID is.
  uuid=$(nmcli -g GENERAL.CON-UUID device show "$ifname" 2>/dev/null || true)
  [[ -n $uuid ]] || die "NetworkManager has no connection on $ifname"
  current=$(nmcli -g ipv6.method,ipv6.addresses,ipv6.gateway connection show "$uuid")
  want=$(printf '%s\n%s\n%s' manual "$NODE_IPV6/$NODE_IPV6_PREFIXLEN" "$GATEWAY_IPV6")
  # nmcli -g escapes ':' in values as '\:'.
  if [[ ${current//\\:/:} != "$want" ]]; then
    run nmcli connection modify "$uuid" ipv6.method manual \
      ipv6.addresses "$NODE_IPV6/$NODE_IPV6_PREFIXLEN" ipv6.gateway "$GATEWAY_IPV6"
    # Apply the changed profile to the device without taking it down (IPv4 lease kept).
    run nmcli device reapply "$ifname"
  fi
}

# set_kv FILE KEY VALUE: a KEY=VALUE line of a sysconfig file (stdin -> stdout).
set_kv() {
  awk -v k="$1" -v v="$2" '
    BEGIN { done = 0 }
    $0 ~ "^[[:space:]]*" k "=" { if (!done) { print k "=" v; done = 1 } ; next }
    { print }
    END { if (!done) print k "=" v }'
}

persist_el7() {
  local ifname=$1 file content
  step "ipv6 persistence (ifcfg)"
  file="/etc/sysconfig/network-scripts/ifcfg-$ifname"
  if [[ -f $DSLAB_ROOT$file ]]; then
    content=$(cat "$DSLAB_ROOT$file")
  else
    # Keep the IPv4 side as it is today: DHCP (the reservation gives the planned address).
    content=$(printf 'DEVICE=%s\nBOOTPROTO=dhcp\nONBOOT=yes\n' "$ifname")
  fi
  content=$(set_kv IPV6INIT yes <<<"$content" | set_kv IPV6_AUTOCONF no | set_kv IPV6_DEFROUTE yes |
    set_kv IPV6ADDR "$NODE_IPV6/$NODE_IPV6_PREFIXLEN" | set_kv IPV6_DEFAULTGW "$GATEWAY_IPV6")
  if write_file "$file" 0644 <<<"$content"; then
    # NetworkManager (when it runs) does not pick up an edited ifcfg file by itself: reloaded, its
    # view of the profile matches the file before the next reboot.
    if unit_active NetworkManager; then run nmcli connection reload; fi
  fi
}

set_hostname() {
  local have=""
  step "hostname"
  [[ -f $DSLAB_ROOT/etc/hostname ]] && have=$(tr -d '[:space:]' <"$DSLAB_ROOT/etc/hostname")
  [[ $have == "$NODE_NAME" ]] || run hostnamectl set-hostname "$NODE_NAME"
}

# Node names resolve only through the lab DNS (both families): drop the node's own name
# from loopback lines of /etc/hosts (vagrant adds "127.0.1.1 name" / "127.0.0.1 name").
clean_hosts() {
  local hosts=/etc/hosts content
  step "/etc/hosts"
  [[ -f $DSLAB_ROOT$hosts ]] || return 0
  content=$(awk -v n="$NODE_NAME" '
    /^[[:space:]]*#/ || NF < 2 { print; next }
    $1 ~ /^127\./ || $1 == "::1" {
      out = $1; kept = 0
      for (i = 2; i <= NF; i++) {
        if ($i == n || index($i, n ".") == 1) continue
        if ($i ~ /^#/) { for (j = i; j <= NF; j++) out = out " " $j; break }
        out = out " " $i; kept++
      }
      if (kept > 0) print out
      next
    }
    { print }' "$DSLAB_ROOT$hosts")
  # Only rewrite (normalising whitespace) when a line actually lost the node name.
  if [[ $content != "$(cat "$DSLAB_ROOT$hosts")" ]] &&
    awk -v n="$NODE_NAME" '($1 ~ /^127\./ || $1 == "::1") { for (i = 2; i <= NF; i++) if ($i == n || index($i, n ".") == 1) f = 1 } END { exit !f }' "$DSLAB_ROOT$hosts"; then
    if write_file "$hosts" 0644 <<<"$content"; then :; fi
  fi
}

main() {
  load_env "${1:-}"
  need NODE_NAME NODE_IPV4 NODE_IPV6 GATEWAY_IPV6
  NODE_IPV6_PREFIXLEN=${NODE_IPV6_PREFIXLEN:-64}
  local family ifname
  step "detect"
  family=$(os_family)
  ifname=$(find_interface)
  log "OS family $family, lab interface $ifname"
  apply_runtime "$ifname"
  persist_sysctl "$ifname"
  case "$family" in
    debian) persist_debian "$ifname" ;;
    el9) persist_el9 "$ifname" ;;
    el7) persist_el7 "$ifname" ;;
  esac
  set_hostname
  clean_hosts
  step "done"
  log "network ready: $ifname $NODE_IPV6/$NODE_IPV6_PREFIXLEN via $GATEWAY_IPV6"
}

main "$@"
