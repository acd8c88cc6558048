#!/usr/bin/env bash
# join.sh [ENV_FILE]: kubeadm join on a worker node, once.
#
# The join configuration is rendered by the lab and uploaded to KUBEADM_JOIN_CONFIG first.
# An existing /etc/kubernetes/kubelet.conf means the node has joined: nothing is done.
#
# Reads: KUBEADM_JOIN_CONFIG (default /opt/dslab/kubeadm-join.yaml)
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

main() {
  load_env "${1:-}"
  local config=${KUBEADM_JOIN_CONFIG:-/opt/dslab/kubeadm-join.yaml}
  step "kubeadm join"
  if [[ -f $DSLAB_ROOT/etc/kubernetes/kubelet.conf ]]; then
    log "already joined (/etc/kubernetes/kubelet.conf exists)"
    return 0
  fi
  [[ -f $DSLAB_ROOT$config ]] || die "kubeadm join configuration $config not found (upload it first)"
  run kubeadm join --config "$config"
  step "done"
  log "node joined"
}

main "$@"
