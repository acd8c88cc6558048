"""``lab.collect``: everything about the lab in one archive, for whoever helps with it.

Per node: the journals of kubelet, docker, containerd and cri-dockerd, ``ip -4/-6 addr`` and
routes, ``ipvsadm -Ln``, the lab's sysctls and kernel modules, ``/etc/docker/daemon.json`` and
the kubeadm configuration the lab wrote there. From the cluster: ``kubectl get -A -o yaml`` of
nodes, pods, Services, EndpointSlices and events, Calico's IPPools, MetalLB's objects, the
kube-system ConfigMaps (kubeadm's and the kubelet's configurations) and the logs of the
kube-system and MetalLB pods. From the host: the effective settings, the rendered files, the
lab's state, its machines, its snapshots, the last ``lab.up`` and ``lab.verify`` logs and the
last verify report.

Every part is listed in ``index.json`` and ``index.txt`` as gathered or not, with the reason
(a node down, no cluster yet, a unit the node does not have); one part that cannot be gathered
never stops the others. Every part is text and passes :func:`scrub` before it is written:
bootstrap tokens, private keys, kubeadm's certificate keys and the kubeconfig's credentials
are replaced. The archive is a gzip'd tar, mode 0600.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import config as lab_config
from . import machines, network, nodeenv, snapshots
from .errors import ConfigError, LabError
from .private import REDACTED, redact
from .remote import SshRunner

#: The exit status of a node command whose subject is not there; its reason is on stderr.
ABSENT = 42
JOURNAL_LINES = 20000
POD_LOG_LINES = 5000
COMMAND_TIMEOUT_S = 180
ADMIN_CONF = "/etc/kubernetes/admin.conf"
UNITS = ("kubelet", "docker", "containerd", "cri-docker")
#: The sysctls the node scripts set (prepare.sh), beside those in the lab's sysctl.d files.
SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.ip_forward",
           "net.ipv6.conf.all.forwarding")
POD_LOG_NAMESPACES = ("kube-system", "metallb-system")
_POD_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")

#: kubeadm's certificate key (``certificateKey``, ``--certificate-key``): 64 hex digits.
CERTIFICATE_KEY = re.compile(r"(?i)(certificate[-_]?key[\"']?\s*[:=]?\s*[\"']?)[0-9a-f]{64}")
#: The secret fields of a kubeconfig user (and any ``token:`` or ``password:`` field of a YAML or JSON document).
CREDENTIAL_FIELD = re.compile(r"(?im)^(\s*-?\s*\"?(?:token|password|id-token|refresh-token|client-key)\"?\s*:\s*)"
                              r"(?!<redacted)(\"?)[^\s\",]+")
#: A JSON web token (service account tokens, JWS signatures), also detached (``header..signature``).
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{8,}")


def scrub(text: str) -> str:
    """``text`` with every secret the lab knows of replaced (:func:`lab.private.redact` and more)."""
    text = redact(text)
    text = CERTIFICATE_KEY.sub(lambda m: m.group(1) + REDACTED, text)
    text = JWT.sub("<redacted jwt>", text)
    return CREDENTIAL_FIELD.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


@dataclass
class Part:
    """One file of the archive, or the reason it is not there."""

    path: str
    what: str
    text: Optional[str] = None
    reason: str = ""

    @property
    def gathered(self) -> bool:
        """True when the part's content was gathered."""
        return self.text is not None


# ---------------------------------------------------------------- the nodes


def _absent(what: str) -> str:
    return f"echo {shlex.quote(what)} >&2; exit {ABSENT}"


def _file(path: str, why: str = "") -> str:
    quoted = shlex.quote(path)
    return f"if [ ! -f {quoted} ]; then {_absent(f'no {path} on this node{why}')}; fi; cat -- {quoted}"


def _journal(unit: str) -> str:
    name = f"{unit}.service"
    return (f"if ! systemctl cat -- {name} >/dev/null 2>&1; then {_absent(f'no {name} on this node')}; fi; "
            f"journalctl --no-pager -o short-iso -n {JOURNAL_LINES} -u {name}")


def _sysctls() -> str:
    keys = " ".join(SYSCTLS)
    return ("for f in /etc/sysctl.d/*dslab*.conf; do [ -f \"$f\" ] || continue; echo \"# $f\"; cat -- \"$f\"; done; "
            "echo '# values'; "
            f"{{ printf '%s\\n' {keys}; sed -n 's/^[[:space:]]*\\([A-Za-z0-9_.-]*\\)[[:space:]]*=.*/\\1/p' "
            "/etc/sysctl.d/*dslab*.conf 2>/dev/null; } | sort -u | while read -r k; do sysctl \"$k\" 2>&1; done")


def _modules() -> str:
    return ("for f in /etc/modules-load.d/*dslab*.conf; do [ -f \"$f\" ] || continue; echo \"# $f\"; cat -- \"$f\"; "
            "done; echo '# loaded (/proc/modules)'; cat /proc/modules")


def node_parts(cfg, node) -> List[tuple]:
    """(file, what, bash command) of every part gathered on ``node``."""
    parts = [(f"journal-{unit}.log", f"journal of {unit}.service", _journal(unit)) for unit in UNITS]
    parts += [
        ("ip-4-addr.txt", "ip -4 addr", "ip -4 addr show"),
        ("ip-6-addr.txt", "ip -6 addr", "ip -6 addr show"),
        ("ip-4-route.txt", "ip -4 route (all tables)", "ip -4 route show table all"),
        ("ip-6-route.txt", "ip -6 route (all tables)", "ip -6 route show table all"),
        ("ipvsadm.txt", "ipvsadm -Ln",
         f"if ! command -v ipvsadm >/dev/null; then {_absent('ipvsadm is not installed on this node')}; fi; "
         "ipvsadm -Ln"),
        ("sysctl.txt", "the lab's sysctl files and values", _sysctls()),
        ("modules.txt", "the lab's module list and the loaded modules", _modules()),
        ("daemon.json", "/etc/docker/daemon.json", _file("/etc/docker/daemon.json")),
    ]
    if node.is_control_plane:
        parts.append(("kubeadm-config.yaml", f"{nodeenv.KUBEADM_CONFIG} (kubeadm init)",
                      _file(nodeenv.KUBEADM_CONFIG, " (lab.up has not reached control-plane)")))
    else:
        parts.append(("kubeadm-join.yaml", f"{nodeenv.KUBEADM_JOIN_CONFIG} (kubeadm join)",
                      _file(nodeenv.KUBEADM_JOIN_CONFIG, " (lab.up has not reached join)")))
    return parts


def _run(runner: SshRunner, node: str, command) -> tuple:
    """(text, reason): the command's output, or why there is none."""
    try:
        result = runner.run(node, command, input=b"", check=False, timeout=COMMAND_TIMEOUT_S)
    except LabError as exc:
        return None, scrub(str(exc))
    if result.returncode == 0:
        return result.stdout, ""
    said = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
    last = scrub(said[-1].strip()) if said else "no output"
    if result.returncode == ABSENT:
        return None, last
    return None, f"exit {result.returncode}: {last}"


def gather_node(cfg, node, runner: Optional[SshRunner], down: Optional[str]) -> List[Part]:
    """The parts of one node; with ``down`` (why it cannot be reached) none is gathered."""
    wanted = node_parts(cfg, node)
    base = f"nodes/{node.name}/"
    if down is None:
        text, reason = _run(runner, node.name, ["true"])
        if text is None:
            down = f"ssh to {node.name} failed ({reason})"
    if down is not None:
        return [Part(base + name, what, reason=down) for name, what, _ in wanted]
    parts = []
    for name, what, command in wanted:
        text, reason = _run(runner, node.name, command)
        parts.append(Part(base + name, what, text, reason))
    return parts


# ---------------------------------------------------------------- the cluster

#: (file, what, kubectl arguments) of the cluster's objects.
CLUSTER_OBJECTS = (
    ("cluster/nodes.yaml", "kubectl get nodes -o yaml", ["get", "nodes", "-o", "yaml"]),
    ("cluster/pods.yaml", "kubectl get pods -A -o yaml", ["get", "pods", "-A", "-o", "yaml"]),
    ("cluster/services.yaml", "kubectl get services -A -o yaml", ["get", "services", "-A", "-o", "yaml"]),
    ("cluster/endpointslices.yaml", "kubectl get endpointslices -A -o yaml",
     ["get", "endpointslices", "-A", "-o", "yaml"]),
    ("cluster/events.yaml", "kubectl get events -A -o yaml", ["get", "events", "-A", "-o", "yaml"]),
    ("cluster/calico-ippools.yaml", "Calico IPPools", ["get", "ippools.crd.projectcalico.org", "-o", "yaml"]),
    ("cluster/kube-system-configmaps.yaml", "kube-system ConfigMaps (kubeadm, kubelet, kube-proxy, Calico, CoreDNS)",
     ["get", "-n", "kube-system", "configmaps", "-o", "yaml"]),
)
KUBECTL = f"kubectl --kubeconfig {ADMIN_CONF}"
#: MetalLB's objects: its ConfigMaps (0.9's configuration), workloads, and every metallb.io resource (0.13 on).
METALLB = (f"kinds=$({KUBECTL} api-resources --api-group=metallb.io -o name 2>/dev/null | paste -sd, -); "
           f"{KUBECTL} get -n metallb-system configmaps,deployments,daemonsets${{kinds:+,$kinds}} -o yaml")


def _cluster_ready(cfg) -> str:
    node = cfg.control_plane.name
    return (f"if [ ! -f {ADMIN_CONF} ]; then "
            f"{_absent(f'no cluster yet: {node} has no {ADMIN_CONF} (lab.up has not reached control-plane)')}; fi; "
            f"if ! command -v kubectl >/dev/null; then {_absent(f'no kubectl on {node}')}; fi; "
            f"{KUBECTL} get --raw /healthz >/dev/null")


def gather_cluster(cfg, runner: Optional[SshRunner], down: Optional[str]) -> List[Part]:
    """The cluster's parts (all through kubectl on the control plane), or their reason."""
    node = cfg.control_plane.name
    wanted = [(path, what) for path, what, _ in CLUSTER_OBJECTS]
    wanted += [("cluster/metallb.yaml", "MetalLB objects")]
    wanted += [(f"cluster/logs/{ns}/", f"logs of the {ns} pods") for ns in POD_LOG_NAMESPACES]
    if down is None:
        text, reason = _run(runner, node, _cluster_ready(cfg))
        if text is None:
            down = reason if reason.startswith("no ") else f"the cluster does not answer on {node} ({reason})"
    else:
        down = f"no cluster reachable: {down}"
    if down is not None:
        return [Part(path, what, reason=down) for path, what in wanted]
    parts = []
    for path, what, args in CLUSTER_OBJECTS:
        text, reason = _run(runner, node, ["kubectl", "--kubeconfig", ADMIN_CONF, *args])
        parts.append(Part(path, what, text, reason))
    text, reason = _run(runner, node, METALLB)
    parts.append(Part("cluster/metallb.yaml", "MetalLB objects", text, reason))
    for ns in POD_LOG_NAMESPACES:
        parts.extend(_pod_logs(runner, node, ns))
    return parts


def _pod_logs(runner: SshRunner, node: str, ns: str) -> List[Part]:
    names, reason = _run(runner, node, ["kubectl", "--kubeconfig", ADMIN_CONF, "get", "pods", "-n", ns, "-o",
                                        "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}"])
    if names is None:
        return [Part(f"cluster/logs/{ns}/", f"logs of the {ns} pods", reason=reason)]
    pods = [n for n in names.split() if _POD_NAME.fullmatch(n)]
    if not pods:
        return [Part(f"cluster/logs/{ns}/", f"logs of the {ns} pods", reason=f"no pods in {ns}")]
    parts = []
    for pod in pods:
        text, reason = _run(runner, node, ["kubectl", "--kubeconfig", ADMIN_CONF, "logs", "-n", ns, pod,
                                           "--all-containers", f"--tail={POD_LOG_LINES}"])
        parts.append(Part(f"cluster/logs/{ns}/{pod}.log", f"logs of pod {ns}/{pod}", text, reason))
    return parts


# ---------------------------------------------------------------- the host


def _newest(cfg, pattern: str) -> Optional[Path]:
    logs = cfg.state_dir / "logs"
    found = [p for p in logs.glob(pattern) if p.is_file() and not p.is_symlink()] if logs.is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, p.name)) if found else None


def _read(path: Optional[Path], what: str, reason: str, name: str) -> Part:
    if path is None:
        return Part(name, what, reason=reason)
    try:
        return Part(name, f"{what} ({path.name})", path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        return Part(name, what, reason=f"{path} cannot be read ({exc.strerror})")


#: The files ``lab.render`` writes into the state directory (what the nodes and libvirt were given).
RENDERED = ("Vagrantfile", "network.xml", "kubeadm-config.yaml", "nodes/*.env", "nodes/*-join.yaml", "manifests/*.yaml")


def _rendered(cfg) -> List[Part]:
    found = sorted({p for pattern in RENDERED for p in cfg.state_dir.glob(pattern)
                    if p.is_file() and not p.is_symlink()})
    if not found:
        return [Part("lab/rendered/", "the rendered files", reason="nothing rendered yet (lab.up has not reached "
                                                                   "render)")]
    parts = []
    for path in found:
        rel = path.relative_to(cfg.state_dir).as_posix()
        parts.append(_read(path, "a rendered file", "", f"lab/rendered/{rel}"))
    return parts


def gather_lab(cfg, machines_text: Optional[str], machines_reason: str) -> List[Part]:
    """The host's parts: settings, rendered files, state, machines, snapshots, last logs and verify report."""
    state = cfg.state_dir / "state.json"
    snaps = snapshots.listing(cfg)
    logs = cfg.state_dir / "logs"
    return [
        *_rendered(cfg),
        Part("lab/config.json", "the effective settings (invoke lab.config)", lab_config.describe(cfg) + "\n"),
        _read(state if state.is_file() else None, "the lab's state", f"no {state}: lab.up has not run",
              "lab/state.json"),
        Part("lab/machines.txt", "the nodes' machines as libvirt sees them", machines_text, machines_reason),
        Part("lab/snapshots.txt", "invoke lab.snapshots", "\n".join(snaps) + "\n" if snaps else None,
             "" if snaps else "the lab has no snapshots"),
        _read(_newest(cfg, "up-*.log"), "the last lab.up log", f"no lab.up log in {logs}", "lab/up.log"),
        _read(_newest(cfg, "verify-*.log"), "the last lab.verify log", f"no lab.verify log in {logs}",
              "lab/verify.log"),
        _read(_newest(cfg, "verify-*.json"), "the last lab.verify report",
              f"no lab.verify report in {logs}", "lab/verify-report.json"),
    ]


def _machines(cfg):
    """(text, reason, node → why it is down) from libvirt; unknown states when libvirt cannot be asked."""
    try:
        import libvirt  # noqa: PLC0415
    except ImportError:
        return None, "libvirt-python is not installed", {}
    try:
        with network.connect(cfg.libvirt_uri) as conn:
            running = set(machines.domains_running(cfg, conn))
    except (LabError, libvirt.libvirtError) as exc:  # the rest is still collected
        said = str(exc).splitlines()
        return None, f"libvirt cannot be asked ({said[0] if said else type(exc).__name__})", {}
    lines, down = [], {}
    for node in cfg.nodes:
        state = "running" if node.name in running else "not running"
        lines.append(f"{node.name:<16} {node.role:<14} {cfg.domain_name(node):<32} {state}")
        if node.name not in running:
            down[node.name] = f"{node.name} is not running (libvirt domain {cfg.domain_name(node)})"
    return "\n".join(lines) + "\n", "", down


# ---------------------------------------------------------------- the archive


def check_out(out, cwd: Optional[Path] = None, name: str = "dslab", stamp: Optional[str] = None) -> Path:
    """The archive's path: ``out``, or ``dslab-<lab>-collect-<time>.tar.gz`` in ``cwd``; one line on bad input."""
    if out is None:
        stamp = stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path(cwd or os.getcwd()) / f"dslab-{name}-collect-{stamp}.tar.gz"
    if not out.strip():
        raise ConfigError(["lab.collect --out: is empty; give a file path"])
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError([f"lab.collect --out: {lab_config.shown(out)} is a directory; give a file path"])
    if path.exists() or path.is_symlink():
        raise ConfigError([f"lab.collect --out: {lab_config.shown(out)} exists; give a new file path"])
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError([f"lab.collect --out: {lab_config.shown(str(parent))} is not a directory; give a file "
                           "path in an existing directory"])
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError([f"lab.collect --out: {lab_config.shown(str(parent))} is not writable; give a file path "
                           "you can write"])
    return path


def index_lines(parts: List[Part]) -> List[str]:
    """``index.txt``: one line per part, gathered (✓) or not (✗, with the reason)."""
    return [f"✓ {p.path}  {p.what}" if p.gathered else f"✗ {p.path}  {p.what}: not gathered: {p.reason}"
            for p in parts]


def write_archive(path: Path, top: str, parts: List[Part], meta: dict) -> None:
    """Write the tar.gz at ``path`` (0600, atomically): the gathered parts, scrubbed, and the index."""
    index = {**meta, "parts": [{"path": p.path, "what": p.what, "gathered": p.gathered, "reason": p.reason}
                               for p in parts]}
    members = [(p.path, p.text) for p in parts if p.gathered and not p.path.endswith("/")]
    members += [("index.json", json.dumps(index, indent=2, ensure_ascii=False) + "\n"),
                ("index.txt", "\n".join(index_lines(parts)) + "\n")]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle, tarfile.open(fileobj=handle, mode="w:gz") as tar:
            now = time.time()
            for name, text in members:
                data = scrub(text).encode("utf-8", errors="replace")
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode, info.mtime = len(data), 0o600, now
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collect(cfg, out: Path, runner: Optional[SshRunner] = None, report: Callable[[str], None] = lambda line: None,
            machines_state: Optional[Callable] = None) -> List[Part]:
    """Gather every part and write the archive ``out``; return the parts (gathered or not)."""
    machines_text, machines_reason, down = (machines_state or _machines)(cfg)
    ssh_config = cfg.state_dir / "ssh_config"
    unreachable = None
    if not ssh_config.is_file():
        unreachable = f"no lab machines known (no {ssh_config}: lab.up has not reached machines)"
    elif runner is None:
        runner = SshRunner(ssh_config, None, "collect")

    def node_job(node):
        return gather_node(cfg, node, runner, unreachable or down.get(node.name))

    control = cfg.control_plane.name
    with ThreadPoolExecutor(max_workers=len(cfg.nodes) + 1) as pool:
        node_jobs: Dict[str, object] = {n.name: pool.submit(node_job, n) for n in cfg.nodes}
        cluster_job = pool.submit(gather_cluster, cfg, runner, unreachable or down.get(control))
    parts: List[Part] = gather_lab(cfg, machines_text, machines_reason)
    for node in cfg.nodes:
        parts.extend(node_jobs[node.name].result())
    parts.extend(cluster_job.result())
    top = out.name[:-len(".tar.gz")] if out.name.endswith(".tar.gz") else out.stem
    meta = {"lab": cfg.name, "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "nodes": [n.name for n in cfg.nodes]}
    write_archive(out, top or "dslab-collect", parts, meta)
    gathered = sum(p.gathered for p in parts)
    report(f"{gathered} parts gathered, {len(parts) - gathered} not (reasons in index.txt)")
    return parts
