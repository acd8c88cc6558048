#!/usr/bin/env bash
# join.sh [ENV_FILE]: kubeadm join on a worker node, once.
#
# The join configuration is rendered by the lab and uploaded to KUBEADM_JOIN_CONFIG first.
# Done means JOIN_DONE, written only after `kubeadm join` exited 0. A join that failed
# leaves pki/ca.crt, bootstrap-kubelet.conf or kubelet.conf behind, on which a second join
# fails its preflight (FileAvailable, Port-10250): such a node is reset first (kubeadm
# reset, CNI config removed). The lab deletes the Node object of a worker it joins again.
# kubelet.conf without bootstrap-kubelet.conf is a join that got past its TLS bootstrap (kubeadm
# removes the bootstrap file once the kubelet has its own credentials): done, before this
# marker existed.
#
# Reads: KUBEADM_JOIN_CONFIG (default /opt/dslab/kubeadm-join.yaml), CRI_SOCKET
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

JOIN_DONE=/var/lib/dslab/kubeadm-join.done

# Any trace of an earlier kubeadm join on this node.
join_traces() {
  local f
  for f in /etc/kubernetes/kubelet.conf /etc/kubernetes/bootstrap-kubelet.conf /etc/kubernetes/pki/ca.crt \
    /var/lib/kubelet/config.yaml; do
    [[ -e $DSLAB_ROOT$f ]] && return 0
  done
  return 1
}

joined_earlier() {
  [[ -f $DSLAB_ROOT/etc/kubernetes/kubelet.conf && ! -e $DSLAB_ROOT/etc/kubernetes/bootstrap-kubelet.conf ]]
}

main() {
  load_env "${1:-}"
  local config=${KUBEADM_JOIN_CONFIG:-/opt/dslab/kubeadm-join.yaml}
  step "kubeadm join"
  if [[ -f $DSLAB_ROOT$JOIN_DONE ]]; then
    log "already joined ($JOIN_DONE)"
    return 0
  fi
  [[ -f $DSLAB_ROOT$config ]] || die "kubeadm join configuration $config not found (upload it first)"
  if joined_earlier; then
    log "joined earlier (kubelet.conf, no bootstrap-kubelet.conf); recording it"
    mark_done "$JOIN_DONE"
    return 0
  fi
  if join_traces; then
    kubeadm_reset "an earlier kubeadm join did not complete"
  fi
  step "kubeadm join"
  run kubeadm join --config "$config"
  mark_done "$JOIN_DONE"
  step "done"
  log "node joined"
}

main "$@"
