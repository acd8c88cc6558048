#!/usr/bin/env bash
# control-plane.sh [ENV_FILE]: kubeadm init on the control-plane node, once.
#
# The kubeadm configuration is rendered by the lab and uploaded to KUBEADM_CONFIG first.
# Images are pulled before init, as the recipe advises on a weak network, unless every image
# kubeadm lists is on the node already (loaded from the host's cache, or baked into the box):
# `kubeadm config images pull` would ask the registry again for each.
#
# Done means INIT_DONE, written only after `kubeadm init` exited 0. admin.conf alone means
# nothing: kubeadm writes it in its kubeconfig phase, before wait-control-plane,
# upload-config, bootstrap-token and addon, so an init that timed out leaves it behind.
# Such a half-done node is reset (kubeadm reset, CNI config and etcd data removed) and
# initialised again. (A node the lab initialised before the marker existed gets its marker
# from the lab, which recorded that init's success.)
#
# Reads: KUBEADM_CONFIG (default /opt/dslab/kubeadm-config.yaml), CRI_SOCKET, RUNTIME
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

# image_present REF: the runtime has the image REF (Docker's store, or containerd's k8s.io namespace).
image_present() {
  case "${RUNTIME:-docker}" in
    docker) docker image inspect "$1" >/dev/null 2>&1 ;;
    containerd) ctr -n k8s.io images ls -q 2>/dev/null | grep -xF -- "$1" >/dev/null ;;
    *) return 1 ;;
  esac
}

# missing_images CONFIG: the images kubeadm lists for CONFIG that the node lacks, one a line
# (every one of them when kubeadm cannot list them: then the pull says why).
missing_images() {
  local listed ref
  if ! listed=$(kubeadm config images list --config "$1" 2>/dev/null) || [[ -z $listed ]]; then
    echo "(kubeadm config images list gave no list)"
    return 0
  fi
  while read -r ref; do
    [[ -z $ref ]] || image_present "$ref" || printf '%s\n' "$ref"
  done <<<"$listed"
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
  if [[ -z $(missing_images "$config") ]]; then
    log "every image kubeadm needs is on the node: nothing to pull"
  else
    run kubeadm config images pull --config "$config"
  fi
  step "kubeadm init"
  run kubeadm init --config "$config"
  mark_done "$INIT_DONE"
  step "done"
  log "control plane initialised"
}

main "$@"
