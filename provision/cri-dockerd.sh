#!/usr/bin/env bash
# cri-dockerd.sh [ENV_FILE]: the kubelet's CRI adapter to Docker, on Kubernetes 1.24+.
#
# Until 1.24 the kubelet talked to Docker itself (dockershim, as in the recipe's 1.17);
# since then cri-dockerd does, and it reports pods' IPv6 addresses only when started with
# --ipv6-dual-stack. Runs in the `kubernetes` step, before the kubelet is installed.
# Nothing to do unless RUNTIME=docker and CRI_DOCKERD_URL is set (seed-2020 sets neither).
#
# Reads: RUNTIME CRI_DOCKERD_URL CRI_DOCKERD_SHA256
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

CRI_DOCKERD_BIN=/usr/local/bin/cri-dockerd

install_cri_dockerd() {
  local stamp=/var/lib/dslab/cri-dockerd.sum archive tmp
  step "cri-dockerd install"
  need CRI_DOCKERD_SHA256
  if [[ -x $DSLAB_ROOT$CRI_DOCKERD_BIN && -f $DSLAB_ROOT$stamp && $(cat "$DSLAB_ROOT$stamp") == "$CRI_DOCKERD_SHA256" ]]; then
    log "cri-dockerd is up to date"
    return 0
  fi
  archive="/var/cache/dslab/$(basename "$CRI_DOCKERD_URL")"
  run bash "$DSLAB_HERE/fetch.sh" "$CRI_DOCKERD_URL" "$CRI_DOCKERD_SHA256" "$archive"
  tmp=$(mktemp -d)
  run tar -xzf "$DSLAB_ROOT$archive" -C "$tmp"
  [[ -f $tmp/cri-dockerd/cri-dockerd ]] || die "$archive has no cri-dockerd/cri-dockerd"
  mkdir -p "$DSLAB_ROOT$(dirname "$CRI_DOCKERD_BIN")" "$DSLAB_ROOT$(dirname "$stamp")"
  run install -m 0755 "$tmp/cri-dockerd/cri-dockerd" "$DSLAB_ROOT$CRI_DOCKERD_BIN"
  rm -rf "$tmp"
  printf '%s\n' "$CRI_DOCKERD_SHA256" >"$DSLAB_ROOT$stamp"
  CRI_DOCKERD_CHANGED=1
}

# Units modelled on upstream packaging/systemd/cri-docker.{service,socket} (Mirantis/cri-dockerd;
# the socket is %t/cri-dockerd.sock since cri-dockerd#26, i.e. the unix:///var/run/cri-dockerd.sock
# kubeadm knows). Upstream's ExecStart has --network-plugin= (none); here --network-plugin=cni for
# Calico and --ipv6-dual-stack (without it pods report only one IP). --pod-infra-container-image is
# left at cri-dockerd's built-in default: a pause tag other than kubeadm's is at most a preflight
# warning (kubernetes#115610, 1.27+) and one extra image pull, never a failure.
# The release tarball holds cri-dockerd/cri-dockerd (packaging/static/Makefile).
cri_dockerd_units() {
  step "cri-dockerd units"
  if write_file /etc/systemd/system/cri-docker.service 0644 <<EOF; then CRI_DOCKERD_CHANGED=1; fi
[Unit]
Description=CRI Interface for Docker Application Container Engine (dslab)
Documentation=https://github.com/Mirantis/cri-dockerd
After=network-online.target firewalld.service docker.service
Wants=network-online.target
Requires=cri-docker.socket

[Service]
Type=notify
ExecStart=$CRI_DOCKERD_BIN --container-runtime-endpoint fd:// --network-plugin=cni --ipv6-dual-stack
ExecReload=/bin/kill -s HUP \$MAINPID
TimeoutSec=0
RestartSec=2
Restart=always
StartLimitBurst=3
StartLimitInterval=60s
LimitNOFILE=infinity
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
  if write_file /etc/systemd/system/cri-docker.socket 0644 <<EOF; then CRI_DOCKERD_CHANGED=1; fi
[Unit]
Description=CRI Docker Socket for the API (dslab)
PartOf=cri-docker.service

[Socket]
ListenStream=%t/cri-dockerd.sock
SocketMode=0660
SocketUser=root
SocketGroup=docker

[Install]
WantedBy=sockets.target
EOF
  step "cri-dockerd service"
  if ((CRI_DOCKERD_CHANGED)); then
    run systemctl daemon-reload
  fi
  ensure_enabled cri-docker.socket
  ensure_started cri-docker.socket
  ensure_running cri-docker.service "$CRI_DOCKERD_CHANGED"
}

main() {
  load_env "${1:-}"
  CRI_DOCKERD_CHANGED=0
  step "detect"
  if [[ ${RUNTIME:-} != docker || -z ${CRI_DOCKERD_URL:-} ]]; then
    log "no cri-dockerd for runtime ${RUNTIME:-unset} on this profile"
    return 0
  fi
  install_cri_dockerd
  cri_dockerd_units
  step "done"
  log "cri-dockerd ready"
}

main "$@"
