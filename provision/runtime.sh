#!/usr/bin/env bash
# runtime.sh [ENV_FILE]: the container runtime kubelet talks to.
#
# RUNTIME=docker: docker (pinned DOCKER_VERSION, or the newest), /etc/docker/daemon.json as
# the recipe has it (merged into an existing file), and, when CRI_DOCKERD_URL is set
# (Kubernetes 1.24+ has no dockershim), cri-dockerd with --ipv6-dual-stack.
# RUNTIME=containerd: containerd with the systemd cgroup driver.
#
# Reads: RUNTIME DOCKER_VERSION DOCKER_FIXED_CIDR_V6 DOCKER_REPO_BASE
#        CRI_DOCKERD_URL CRI_DOCKERD_SHA256
set -euo pipefail
# shellcheck source=provision/lib.sh
. "${DSLAB_LIB:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"

CRI_DOCKERD_BIN=/usr/local/bin/cri-dockerd

# Docker's package repository for the OS (rpm: its .repo file; deb: key + list).
docker_repo() {
  local family=$1 codename
  case "$family" in
    el7 | el9)
      # What `dnf config-manager --add-repo <base>/centos/docker-ce.repo` (CentOS Stream 9's
      # dnf4, docker/docs centos.md) and `yum-config-manager --add-repo` (EL7) do: save that file
      # as /etc/yum.repos.d/docker-ce.repo. Done with curl, so no dnf-plugins-core/yum-utils.
      if [[ ! -f $DSLAB_ROOT/etc/yum.repos.d/docker-ce.repo ]]; then
        mkdir -p "$DSLAB_ROOT/etc/yum.repos.d"
        run curl -fsSL --retry 5 -o "$DSLAB_ROOT/etc/yum.repos.d/docker-ce.repo" "$DOCKER_REPO_BASE/centos/docker-ce.repo"
      fi
      ;;
    debian)
      # docker/docs content/manuals/engine/install/debian.md: key at /etc/apt/keyrings/docker.asc.
      apt_asc_key "$DOCKER_REPO_BASE/debian/gpg" /etc/apt/keyrings/docker.asc
      # shellcheck source=/dev/null
      codename=$(. "$DSLAB_ROOT/etc/os-release" && printf '%s' "${VERSION_CODENAME:-bookworm}")
      if write_file /etc/apt/sources.list.d/docker.list 0644 <<EOF; then run env DEBIAN_FRONTEND=noninteractive apt-get update; fi
deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] $DOCKER_REPO_BASE/debian $codename stable
EOF
      ;;
  esac
}

install_docker() {
  local family=$1 v=${DOCKER_VERSION:-}
  step "docker install"
  if command -v dockerd >/dev/null 2>&1; then
    log "dockerd is already installed ($(command -v dockerd)); using it"
    return 0
  fi
  docker_repo "$family"
  case "$family" in
    el7 | el9)
      if [[ -n $v ]]; then
        # name-version: yum/dnf match it against the packages' [epoch:]version-release
        # (docker-ce-19.03.5 -> docker-ce-19.03.5-3.el7); containerd.io is left unpinned, as in
        # the docs' install-a-specific-version command.
        pkg_install "$family" "docker-ce-$v" "docker-ce-cli-$v" containerd.io
      else
        pkg_install "$family" docker-ce docker-ce-cli containerd.io
      fi
      ;;
    debian)
      [[ -z $v ]] || die "DOCKER_VERSION pinning is only supported on EL (got $v)"
      pkg_install debian docker-ce docker-ce-cli containerd.io
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
  ensure_enabled docker
  if unit_active docker; then
    if ((DAEMON_JSON_CHANGED)); then run systemctl restart docker; fi
  else
    run systemctl start docker
  fi
}

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
  ensure_enabled cri-docker.service
  ensure_started cri-docker.socket
  if unit_active cri-docker.service; then
    if ((CRI_DOCKERD_CHANGED)); then run systemctl restart cri-docker.service; fi
  else
    run systemctl start cri-docker.service
  fi
}

install_containerd() {
  local family=$1
  step "containerd install"
  if command -v containerd >/dev/null 2>&1; then
    log "containerd is already installed; using it"
    return 0
  fi
  # containerd.io from Docker's repository on every family (one source, current releases).
  docker_repo "$family"
  pkg_install "$family" containerd.io
}

containerd_config() {
  local path=/etc/containerd/config.toml config changed=0
  step "containerd config"
  config=$(containerd config default) || die "containerd config default (exit $?)"
  config=$(sed -E 's/^([[:space:]]*)SystemdCgroup = false/\1SystemdCgroup = true/' <<<"$config")
  grep -q 'SystemdCgroup = true' <<<"$config" || die "containerd's default config has no SystemdCgroup setting to turn on"
  if write_file "$path" 0644 <<<"$config"; then changed=1; fi
  step "containerd service"
  ensure_enabled containerd
  if unit_active containerd; then
    if ((changed)); then run systemctl restart containerd; fi
  else
    run systemctl start containerd
  fi
}

main() {
  load_env "${1:-}"
  need RUNTIME
  DOCKER_REPO_BASE=${DOCKER_REPO_BASE:-https://download.docker.com/linux}
  CRI_DOCKERD_CHANGED=0
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
      if [[ -n ${CRI_DOCKERD_URL:-} ]]; then
        install_cri_dockerd
        cri_dockerd_units
      fi
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
