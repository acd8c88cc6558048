#!/usr/bin/env bash
# control-plane.sh [ENV_FILE]: kubeadm init on the control-plane node, once.
#
# The kubeadm configuration is rendered by the lab and uploaded to KUBEADM_CONFIG first.
# Images are pulled before init, as the recipe advises on a weak network.
#
# Done means INIT_DONE, written only after `kubeadm init` exited 0. admin.conf alone means
# nothing: kubeadm writes it in its kubeconfig phase, before wait-control-plane,
# upload-config, bootstrap-token and addon, so an init that timed out leaves it behind.
# Such a half-done node is reset (kubeadm reset, CNI config and etcd data removed) and
# initialised again. (A node the lab initialised before the marker existed gets its marker
# from the lab, which recorded that init's success.)
#
# Reads: KUBEADM_CONFIG (default /opt/dslab/kubeadm-config.yaml), CRI_SOCKET
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

INIT_DONE=/var/lib/dslab/kubeadm-init.done
ADMIN_CONF=/etc/kubernetes/admin.conf

# Any trace of an earlier kubeadm init on this node.
init_traces() {
  local f
  for f in "$ADMIN_CONF" /etc/kubernetes/pki/ca.crt /etc/kubernetes/manifests/kube-apiserver.yaml \
    /etc/kubernetes/manifests/etcd.yaml /var/lib/etcd/member /var/lib/kubelet/config.yaml; do
    [[ -e $DSLAB_ROOT$f ]] && return 0
  done
  return 1
}

main() {
  load_env "${1:-}"
  local config=${KUBEADM_CONFIG:-/opt/dslab/kubeadm-config.yaml} f
  step "kubeadm init"
  if [[ -f $DSLAB_ROOT$INIT_DONE ]]; then
    log "already initialised ($INIT_DONE)"
    return 0
  fi
  [[ -f $DSLAB_ROOT$config ]] || die "kubeadm configuration $config not found (upload it first)"
  if init_traces; then
    kubeadm_reset "an earlier kubeadm init did not complete"
    # kubeadm 1.17's reset empties the etcd data directory only when etcd.yaml is still there.
    for f in "$DSLAB_ROOT"/var/lib/etcd/*; do
      [[ -e $f ]] || continue
      run rm -rf "$f"
    done
  fi
  step "kubeadm images pull"
  run kubeadm config images pull --config "$config"
  step "kubeadm init"
  run kubeadm init --config "$config"
  mark_done "$INIT_DONE"
  step "done"
  log "control plane initialised"
}

main "$@"
