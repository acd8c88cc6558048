#!/usr/bin/env bash
# control-plane.sh [ENV_FILE]: kubeadm init on the control-plane node, once.
#
# The kubeadm configuration is rendered by the lab and uploaded to KUBEADM_CONFIG first.
# Images are pulled before init, as the recipe advises on a weak network.
# An existing /etc/kubernetes/admin.conf means the node is initialised: nothing is done.
#
# Reads: KUBEADM_CONFIG (default /opt/dslab/kubeadm-config.yaml)
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

main() {
  load_env "${1:-}"
  local config=${KUBEADM_CONFIG:-/opt/dslab/kubeadm-config.yaml}
  step "kubeadm init"
  if [[ -f $DSLAB_ROOT/etc/kubernetes/admin.conf ]]; then
    log "already initialised (/etc/kubernetes/admin.conf exists)"
    return 0
  fi
  [[ -f $DSLAB_ROOT$config ]] || die "kubeadm configuration $config not found (upload it first)"
  step "kubeadm images pull"
  run kubeadm config images pull --config "$config"
  step "kubeadm init"
  run kubeadm init --config "$config"
  step "done"
  log "control plane initialised"
}

main "$@"
