#!/usr/bin/env bash
# join.sh [ENV_FILE]: kubeadm join on a worker node, once.
# join.sh --pending: exit 0 when a run would (re)join the node, 1 when it has joined.
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

# The node has joined: the marker, or a join that got past its TLS bootstrap before the marker existed.
joined() {
  [[ -f $DSLAB_ROOT$JOIN_DONE ]] || joined_earlier
}

main() {
  load_env "${1:-}"
  local config=${KUBEADM_JOIN_CONFIG:-/opt/dslab/kubeadm-join.yaml}
  step "kubeadm join"
  if joined; then
    [[ -f $DSLAB_ROOT$JOIN_DONE ]] || mark_done "$JOIN_DONE"
    log "already joined ($JOIN_DONE)"
    return 0
  fi
  [[ -f $DSLAB_ROOT$config ]] || die "kubeadm join configuration $config not found (upload it first)"
  if join_traces; then
    kubeadm_reset "an earlier kubeadm join did not complete"
  fi
  step "kubeadm join"
  run kubeadm join --config "$config"
  mark_done "$JOIN_DONE"
  step "done"
  log "node joined"
}

if [[ ${1:-} == --pending ]]; then
  if joined; then exit 1; else exit 0; fi
fi
main "$@"
