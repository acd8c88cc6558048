#!/usr/bin/env bash
# kubernetes.sh [ENV_FILE]: kubeadm, kubelet and kubectl at KUBERNETES_VERSION.
#
# KUBERNETES_SOURCE=packages: the pkgs.k8s.io repository of KUBERNETES_MINOR (EL9: rpm,
# Debian: deb), packages pinned to KUBERNETES_VERSION.
# KUBERNETES_SOURCE=archive (seed-2020: the old yum/apt repositories are gone): the release's
# node tarball (KUBERNETES_ARCHIVE_URL, checked against KUBERNETES_ARCHIVE_SUM), plus the
# kubelet.service unit and 10-kubeadm.conf drop-in the kubernetes/release packages of that era
# installed. kubelet is enabled, not started: it cannot run before kubeadm init/join.
#
# Reads: KUBERNETES_VERSION KUBERNETES_MINOR KUBERNETES_SOURCE KUBERNETES_REPO_BASE
#        KUBERNETES_ARCHIVE_URL KUBERNETES_ARCHIVE_SUM
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

K8S_PACKAGES=(kubelet kubeadm kubectl)
# The pkgs.k8s.io signing key ("isv:kubernetes OBS Project", the same key for the deb Release.key
# and the rpm repomd.xml.key of every minor). The Kubernetes project publishes no fingerprint for it
# (kubernetes/website#42718 asks for one); this is the fingerprint gpg shows for the key as served,
# e.g. kubernetes/kubernetes#128609 (v1.26 and v1.27 Release.key), and a CentOS-family dnf import
# of v1.36's repomd.xml.key ("Importing GPG key 0x9A296436 ... DE15 B144 ...").
KUBERNETES_KEY_FINGERPRINT="DE15 B144 86CD 377B 9E87 6E1A 2346 54DA 9A29 6436"
KUBERNETES_RPM_KEY=/etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-kubernetes

packages_current() {
  local family=$1 pkg
  for pkg in "${K8S_PACKAGES[@]}"; do
    case "$family" in
      debian) [[ $(pkg_version debian "$pkg") == "$KUBERNETES_VERSION"-* ]] || return 1 ;;
      *) [[ $(pkg_version "$family" "$pkg") == "$KUBERNETES_VERSION" ]] || return 1 ;;
    esac
  done
}

# As in the kubeadm install docs (kubernetes/website .../tools/kubeadm/install-kubeadm.md): one
# repository per minor, kube packages excluded from ordinary updates and installed with
# --disableexcludes=kubernetes. "kubelet-1.36.0" is dnf's name-version form; it matches the
# repository's kubelet-1.36.0-<release> (the upgrade page pins with kubeadm-'1.36.x-*').
install_rpm() {
  local family=$1 repo="$KUBERNETES_REPO_BASE/v$KUBERNETES_MINOR/rpm/" pkg
  step "kubernetes repository"
  # The install page's gpgkey=<repo>repodata/repomd.xml.key, fetched and checked against the pinned
  # fingerprint first; dnf imports the local copy only.
  pinned_key "${repo}repodata/repomd.xml.key" "$KUBERNETES_RPM_KEY" "$KUBERNETES_KEY_FINGERPRINT"
  if write_file /etc/yum.repos.d/kubernetes.repo 0644 <<EOF; then :; fi
[kubernetes]
name=Kubernetes
baseurl=$repo
enabled=1
gpgcheck=1
gpgkey=file://$KUBERNETES_RPM_KEY
exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni
EOF
  step "kubernetes packages"
  if packages_current "$family"; then
    log "kubelet, kubeadm and kubectl are at $KUBERNETES_VERSION"
    return 0
  fi
  local wanted=()
  for pkg in "${K8S_PACKAGES[@]}"; do wanted+=("$pkg-$KUBERNETES_VERSION"); done
  pkg_install "$family" "${wanted[@]}" --disableexcludes=kubernetes
}

install_deb() {
  local repo="$KUBERNETES_REPO_BASE/v$KUBERNETES_MINOR/deb/" key=/etc/apt/keyrings/kubernetes-apt-keyring.asc pkg held
  step "kubernetes repository"
  # The install page dearmors Release.key into kubernetes-apt-keyring.gpg; apt (Debian 12: 2.6)
  # reads the armoured key as it is from a *.asc file, so it is kept as downloaded (apt_asc_key).
  apt_asc_key "${repo}Release.key" "$key" "$KUBERNETES_KEY_FINGERPRINT"
  local list_changed=0
  if write_file /etc/apt/sources.list.d/kubernetes.list 0644 <<EOF; then list_changed=1; fi
deb [signed-by=$key] $repo /
EOF
  step "kubernetes packages"
  if ! packages_current debian; then
    run env DEBIAN_FRONTEND=noninteractive apt-get update
    list_changed=0
    local wanted=()
    # pkgs.k8s.io debs are versioned <upstream>-<revision> (1.36.0-1.1); the upgrade page pins
    # with kubeadm='1.36.x-*', an apt version glob.
    for pkg in "${K8S_PACKAGES[@]}"; do wanted+=("$pkg=$KUBERNETES_VERSION-*"); done
    pkg_install debian --allow-change-held-packages "${wanted[@]}"
  fi
  if ((list_changed)); then run env DEBIAN_FRONTEND=noninteractive apt-get update; fi
  held=$(apt-mark showhold 2>/dev/null || true)
  for pkg in "${K8S_PACKAGES[@]}"; do
    grep -qxF "$pkg" <<<"$held" || run apt-mark hold "$pkg"
  done
}

install_archive() {
  local family=$1 stamp=/var/lib/dslab/kubernetes-node.sum archive tmp bin ok=1
  need KUBERNETES_ARCHIVE_URL KUBERNETES_ARCHIVE_SUM
  step "kubernetes binaries"
  for bin in "${K8S_PACKAGES[@]}"; do
    [[ -x $DSLAB_ROOT/usr/bin/$bin ]] || ok=0
  done
  if ((ok)) && [[ -f $DSLAB_ROOT$stamp && $(cat "$DSLAB_ROOT$stamp") == "$KUBERNETES_VERSION $KUBERNETES_ARCHIVE_SUM" ]]; then
    log "kubelet, kubeadm and kubectl are at $KUBERNETES_VERSION"
  else
    archive="/var/cache/dslab/$(basename "$KUBERNETES_ARCHIVE_URL")"
    run bash "$DSLAB_HERE/fetch.sh" "$KUBERNETES_ARCHIVE_URL" "$KUBERNETES_ARCHIVE_SUM" "$archive"
    tmp=$(mktemp -d)
    run tar -xzf "$DSLAB_ROOT$archive" -C "$tmp"
    mkdir -p "$DSLAB_ROOT/usr/bin" "$DSLAB_ROOT$(dirname "$stamp")"
    for bin in "${K8S_PACKAGES[@]}"; do
      [[ -f $tmp/kubernetes/node/bin/$bin ]] || die "$archive has no kubernetes/node/bin/$bin"
      run install -m 0755 "$tmp/kubernetes/node/bin/$bin" "$DSLAB_ROOT/usr/bin/$bin"
    done
    rm -rf "$tmp"
    printf '%s %s\n' "$KUBERNETES_VERSION" "$KUBERNETES_ARCHIVE_SUM" >"$DSLAB_ROOT$stamp"
  fi

  # The unit and drop-in of the kubernetes/release rpm/deb packages of that era; the
  # drop-in reads the flags kubeadm writes (kubeadm-flags.env) and the user's overrides.
  local defaults=/etc/sysconfig/kubelet units_changed=0
  [[ $family != debian ]] || defaults=/etc/default/kubelet
  step "kubelet unit"
  if write_file /etc/systemd/system/kubelet.service 0644 <<'EOF'; then units_changed=1; fi
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
  if write_file /etc/systemd/system/kubelet.service.d/10-kubeadm.conf 0644 <<EOF; then units_changed=1; fi
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-$defaults
ExecStart=
ExecStart=/usr/bin/kubelet \$KUBELET_KUBECONFIG_ARGS \$KUBELET_CONFIG_ARGS \$KUBELET_KUBEADM_ARGS \$KUBELET_EXTRA_ARGS
EOF
  if ((units_changed)); then run systemctl daemon-reload; fi
}

main() {
  load_env "${1:-}"
  need KUBERNETES_VERSION KUBERNETES_SOURCE
  KUBERNETES_MINOR=${KUBERNETES_MINOR:-$(cut -d. -f1,2 <<<"$KUBERNETES_VERSION")}
  KUBERNETES_REPO_BASE=${KUBERNETES_REPO_BASE:-https://pkgs.k8s.io/core:/stable:}
  local family
  step "detect"
  family=$(os_family)
  log "OS family $family, Kubernetes $KUBERNETES_VERSION from $KUBERNETES_SOURCE"
  case "$KUBERNETES_SOURCE:$family" in
    packages:el9) install_rpm el9 ;;
    packages:debian) install_deb ;;
    packages:el7) die "no Kubernetes package repository serves CentOS 7 any more; use the seed-2020 profile (archive)" ;;
    archive:*) install_archive "$family" ;;
    *) die "KUBERNETES_SOURCE must be packages or archive (got $KUBERNETES_SOURCE)" ;;
  esac
  step "kubelet enable"
  # enable only, not --now: kubelet cannot start before kubeadm init/join writes its config.
  ensure_enabled kubelet
  step "done"
  log "kubeadm, kubelet and kubectl $KUBERNETES_VERSION installed"
}

main "$@"
