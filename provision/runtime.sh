#!/usr/bin/env bash
# runtime.sh [ENV_FILE]: the container runtime kubelet talks to.
#
# RUNTIME=docker: docker (pinned DOCKER_VERSION, or the newest) and /etc/docker/daemon.json
# as the recipe has it (merged into an existing file). The kubelet's adapter to Docker on
# Kubernetes 1.24+ (cri-dockerd) is installed with the kubelet, by cri-dockerd.sh.
# RUNTIME=containerd: containerd with the systemd cgroup driver.
#
# Reads: RUNTIME DOCKER_VERSION CONTAINERD_VERSION DOCKER_FIXED_CIDR_V6 DOCKER_REPO_BASE
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

# The fingerprints of Docker's repository signing keys, as Docker's install pages publish them:
# docker/docs engine/install/debian.md @b39a6c26d6de778fd83ff91739a0dbb02e8fd9e5 (debian/gpg,
# "Docker Release (CE deb)") and content/manuals/engine/install/centos.md
# @26aaea63a4db491c05d6b535d9749bf492898a76 (centos/gpg, "Docker Release (CE rpm)").
DOCKER_DEB_KEY_FINGERPRINT="9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88"
DOCKER_RPM_KEY_FINGERPRINT="060A 61C5 1B55 8A7F 742B 77AA C52F EB6B 621E 9F35"
DOCKER_RPM_KEY=/etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce

# Docker's package repository for the OS (rpm: key + .repo file; deb: key + list).
docker_repo() {
  local family=$1 codename
  case "$family" in
    el7 | el9)
      # The stable section of the docker-ce.repo that `dnf config-manager --add-repo
      # <base>/centos/docker-ce.repo` (docker/docs centos.md) would save, written here instead of
      # fetched from the repository it configures, with the key as a local file already checked
      # against its pinned fingerprint: yum/dnf import only that key (gpgkey=file://).
      pinned_key "$DOCKER_REPO_BASE/centos/gpg" "$DOCKER_RPM_KEY" "$DOCKER_RPM_KEY_FINGERPRINT"
      if write_file /etc/yum.repos.d/docker-ce.repo 0644 <<EOF; then :; fi
[docker-ce-stable]
name=Docker CE Stable - \$basearch
baseurl=$DOCKER_REPO_BASE/centos/\$releasever/\$basearch/stable
enabled=1
gpgcheck=1
gpgkey=file://$DOCKER_RPM_KEY
EOF
      ;;
    debian)
      # docker/docs content/manuals/engine/install/debian.md: key at /etc/apt/keyrings/docker.asc.
      apt_asc_key "$DOCKER_REPO_BASE/debian/gpg" /etc/apt/keyrings/docker.asc "$DOCKER_DEB_KEY_FINGERPRINT"
      # shellcheck source=/dev/null
      codename=$(. "$DSLAB_ROOT/etc/os-release" && printf '%s' "${VERSION_CODENAME:-bookworm}")
      if write_file /etc/apt/sources.list.d/docker.list 0644 <<EOF; then run env DEBIAN_FRONTEND=noninteractive apt-get update; fi
deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] $DOCKER_REPO_BASE/debian $codename stable
EOF
      ;;
  esac
}

# containerd_package FAMILY: containerd.io, pinned to CONTAINERD_VERSION ([epoch:]version-release
# on EL, e.g. 1.2.10-3.2.el7) when that is set.
containerd_package() {
  local v=${CONTAINERD_VERSION:-}
  if [[ -z $v ]]; then
    printf 'containerd.io\n'
  elif [[ $1 == debian ]]; then
    die "CONTAINERD_VERSION pinning is only supported on EL (got $v)"
  else
    printf 'containerd.io-%s\n' "$v"
  fi
}

install_docker() {
  local family=$1 v=${DOCKER_VERSION:-} containerd
  step "docker install"
  if command -v dockerd >/dev/null 2>&1; then
    log "dockerd is already installed ($(command -v dockerd)); using it"
    return 0
  fi
  containerd=$(containerd_package "$family")
  docker_repo "$family"
  case "$family" in
    el7 | el9)
      if [[ -n $v ]]; then
        # name-version: yum/dnf match it against the packages' [epoch:]version-release
        # (docker-ce-19.03.5 -> docker-ce-19.03.5-3.el7); containerd.io as CONTAINERD_VERSION says.
        pkg_install "$family" "docker-ce-$v" "docker-ce-cli-$v" "$containerd"
      else
        pkg_install "$family" docker-ce docker-ce-cli "$containerd"
      fi
      ;;
    debian)
      [[ -z $v ]] || die "DOCKER_VERSION pinning is only supported on EL (got $v)"
      pkg_install debian docker-ce docker-ce-cli "$containerd"
      ;;
  esac
}

# The recipe's daemon.json keys, merged into the existing file (other keys kept).
daemon_json() {
  local path=/etc/docker/daemon.json py merged
  step "docker daemon.json"
  py=$(command -v python3 || command -v python || true)
  if [[ -z $py ]]; then
    [[ ! -f $DSLAB_ROOT$path ]] || die "$path exists and no python is available to merge into it"
    py=none
  fi
  if [[ $py == none ]]; then
    merged=$(printf '{\n  "exec-opts": ["native.cgroupdriver=systemd"],\n  "log-driver": "json-file",\n  "log-opts": {\n    "max-size": "100m"\n  },\n  "storage-driver": "overlay2",\n  "ipv6": true,\n  "fixed-cidr-v6": "%s"\n}' "$DOCKER_FIXED_CIDR_V6")
  else
    merged=$("$py" -c '
import json, os, sys
path, cidr = sys.argv[1], sys.argv[2]
current = {}
if os.path.exists(path):
    with open(path) as handle:
        text = handle.read()
    current = json.loads(text) if text.strip() else {}
merged = dict(current)
merged.update({
    "exec-opts": ["native.cgroupdriver=systemd"],
    "log-driver": "json-file",
    "log-opts": dict(current.get("log-opts") or {}, **{"max-size": "100m"}),
    "storage-driver": "overlay2",
    "ipv6": True,
    "fixed-cidr-v6": cidr,
})
if merged == current:
    sys.stdout.write("=unchanged=")
else:
    sys.stdout.write(json.dumps(merged, indent=2, separators=(",", ": ")))
' "$DSLAB_ROOT$path" "$DOCKER_FIXED_CIDR_V6") || die "cannot merge $path (is it valid JSON?)"
  fi
  DAEMON_JSON_CHANGED=0
  if [[ $merged == "=unchanged=" ]]; then
    log "$path already has the recipe's settings"
  elif write_file "$path" 0644 <<<"$merged"; then
    DAEMON_JSON_CHANGED=1
  fi
}

docker_service() {
  step "docker service"
  ensure_running docker "$DAEMON_JSON_CHANGED"
}

install_containerd() {
  local family=$1 containerd
  step "containerd install"
  if command -v containerd >/dev/null 2>&1; then
    log "containerd is already installed; using it"
    return 0
  fi
  # containerd.io from Docker's repository on every family (one source, current releases).
  containerd=$(containerd_package "$family")
  docker_repo "$family"
  pkg_install "$family" "$containerd"
}

containerd_config() {
  local path=/etc/containerd/config.toml config changed=0
  step "containerd config"
  config=$(containerd config default) || die "containerd config default (exit $?)"
  config=$(sed -E 's/^([[:space:]]*)SystemdCgroup = false/\1SystemdCgroup = true/' <<<"$config")
  grep -q 'SystemdCgroup = true' <<<"$config" || die "containerd's default config has no SystemdCgroup setting to turn on"
  if write_file "$path" 0644 <<<"$config"; then changed=1; fi
  step "containerd service"
  ensure_running containerd "$changed"
}

main() {
  load_env "${1:-}"
  need RUNTIME
  DOCKER_REPO_BASE=${DOCKER_REPO_BASE:-https://download.docker.com/linux}
  local family
  step "detect"
  family=$(os_family)
  log "OS family $family, runtime $RUNTIME"
  case "$RUNTIME" in
    docker)
      need DOCKER_FIXED_CIDR_V6
      install_docker "$family"
      daemon_json
      docker_service
      ;;
    containerd)
      install_containerd "$family"
      containerd_config
      ;;
    *) die "RUNTIME must be docker or containerd (got $RUNTIME)" ;;
  esac
  step "done"
  log "container runtime ready"
}

main "$@"
