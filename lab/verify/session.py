"""What the checks of one ``lab.verify`` run share.

:class:`VerifyContext` wraps the lab :class:`~lab.context.Context` (its ``cfg``,
``kubectl``, ``kubectl_json``, ``runner`` and ``state`` are reachable directly), adds a
``host_run`` hook for commands on the host (injectable for tests), caches ``kubectl get``
answers for the run, and owns the short-lived client pods: made once a run, before any check
that needs their image (the client pods' image is the image of every pod verify creates), so
one budget covers the image pull, and a failure is said at once by every later check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..context import Result
from ..errors import LabError
from .model import Finding, kube_minor, url_host

try:  # the workload module names where the recipe's nginx runs and how its pods are labelled
    from ..workloads import APP as _APP, NAMESPACE as _NAMESPACE
except ImportError:  # pragma: no cover - workloads not present
    _APP, _NAMESPACE = "my-nginx", "default"

#: Where the recipe's nginx runs and how its pods are labelled.
WORKLOAD_NAMESPACE = _NAMESPACE
WORKLOAD_SELECTOR = {"app": _APP}

#: The label that marks every object lab.verify creates (and deletes).
CLIENT_LABEL_KEY = "app.kubernetes.io/managed-by"
CLIENT_LABEL_VALUE = "dslab-verify"
VERIFY_SELECTOR = f"{CLIENT_LABEL_KEY}={CLIENT_LABEL_VALUE}"
#: The label of the client pods alone (the other pods verify creates carry the one above too).
CLIENT_ROLE_KEY = "dslab.verify/role"
CLIENT_ROLE_VALUE = "client"
CLIENT_SELECTOR = f"{CLIENT_ROLE_KEY}={CLIENT_ROLE_VALUE}"
CLIENT_NAME_PREFIX = "dslab-verify-client-"

#: CoreDNS's cluster domain (kubeadm's default).
CLUSTER_DOMAIN = "cluster.local"
HTTP_TIMEOUT_S = 5
#: The limit of one command (a kubectl call, a node's probe script).
COMMAND_TIMEOUT_S = 120
#: The one budget of the client pods: ``kubectl wait --timeout`` gets it, and the command
#: running that wait gets it plus :data:`RUNNER_MARGIN_S`, so kubectl always answers first.
CLIENT_READY_TIMEOUT_S = 180
CLIENT_READY_TIMEOUT = f"{CLIENT_READY_TIMEOUT_S}s"
#: ``kubectl delete --wait=true --timeout``: removing what an earlier run left.
DELETE_TIMEOUT_S = 60
#: What ssh and kubectl need on top of a command's own limit (connection, start-up).
RUNNER_MARGIN_S = 30
#: Exit status of a command that ran out of time (as coreutils' timeout(1) says it).
TIMEOUT_RC = 124
#: Exit status of a command that could not be run at all (ssh or kubectl failed to start it).
NOT_RUN_RC = 255

#: Proxy settings that must not reach a probe of lab addresses (curl reads every one of them).
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy",
                   "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY")
#: The first line of every probe script run on a node or in a pod.
UNSET_PROXY = "unset " + " ".join(PROXY_VARIABLES)

HostRun = Callable[[Sequence[str]], Result]


def runner_timeout(limit_s: float) -> float:
    """The limit of the command that runs something bounded by ``limit_s`` itself."""
    return limit_s + RUNNER_MARGIN_S


def host_env() -> Dict[str, str]:
    """The host's environment without proxy settings (every host command probes lab addresses)."""
    return {key: value for key, value in os.environ.items() if key not in PROXY_VARIABLES}


def host_run(command: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> Result:
    """Run ``command`` (an argument list, no shell) on the host, without proxy settings, and capture its output."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False,
                              env=host_env())
    except FileNotFoundError as exc:
        return Result(127, "", str(exc))
    except subprocess.TimeoutExpired:
        return Result(TIMEOUT_RC, "", f"{command[0]} timed out after {timeout:.0f} s")
    return Result(done.returncode, done.stdout, done.stderr)


def curl_command(url: str, token: Optional[str] = None) -> List[str]:
    """curl printing only the HTTP status code (000 when no answer) and its error text (``-S``),
    never through a proxy (``--noproxy '*'``)."""
    if token:
        url = f"{url}?dslab-verify={token}"
    return ["curl", "-g", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
            "--max-time", str(HTTP_TIMEOUT_S), url]


def http_url(address, port: int) -> str:
    """``http://addr:port/`` with IPv6 in brackets."""
    return f"http://{url_host(address)}:{port}/"


class CommandTimeout(LabError):
    """A command of a check ran out of time: ``what`` and after how many ``seconds``."""

    def __init__(self, what: str, seconds: float):
        super().__init__(f"{what} timed out after {seconds:.0f} s")
        self.what = what
        self.seconds = seconds


LOOK_CLIENTS = (f"`kubectl describe pod -n {WORKLOAD_NAMESPACE} -l {CLIENT_SELECTOR}` "
                "(image pull from registry.k8s.io? the CNI on that node?)")


class ClientError(LabError):
    """The client pods could not be created or did not become ready."""

    def finding(self) -> Finding:
        """The finding a check reports instead of its probes."""
        return Finding(str(self), f"client pods Ready within {CLIENT_READY_TIMEOUT_S} s", "not Ready", LOOK_CLIENTS)


@contextlib.contextmanager
def shielded():
    """Ignore SIGINT/SIGTERM while cleaning up, so a second Ctrl-C cannot strand objects
    (the commands run meanwhile inherit the ignored signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _is_timeout(exc: LabError, elapsed: float, limit: float) -> bool:
    return "timed out" in str(exc) or elapsed >= limit


def pod_waiting(pod: dict) -> List[str]:
    """``reason (message)`` of every container of ``pod`` that is not running yet
    (``ErrImagePull``, ``ImagePullBackOff``, ``ContainerCreating``), or its phase when it has none."""
    status = pod.get("status") or {}
    states = status.get("containerStatuses") or []
    found = []
    for entry in states:
        waiting = (entry.get("state") or {}).get("waiting") or {}
        if waiting:
            found.append(f"{waiting.get('reason')}" + (f" ({waiting['message']})" if waiting.get("message") else ""))
    return found if states else [f"phase {status.get('phase')}"]


@dataclass
class VerifyContext:
    """The lab Context plus what one verify run shares (cache, host hook, client pods, clock)."""

    lab: object
    host_run: HostRun = host_run
    cache: Dict[tuple, object] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _clients: Optional[Dict[str, str]] = None
    _client_error: Optional[str] = None
    #: node -> what kept its client pod from Ready (the pod status' waiting reason and message)
    _client_waiting: Dict[str, str] = field(default_factory=dict)
    _client_wait_text: str = ""
    #: set once verify may have created an object of its own (client pods, a check's pods or
    #: Services): the run then removes every object it labels, also after Ctrl-C
    objects_created: bool = False

    def __getattr__(self, name):
        # Only called for attributes not found normally: cfg, kubectl, runner, state, ...
        if name.startswith("_") or name == "lab":
            raise AttributeError(name)
        return getattr(self.lab, name)

    @property
    def minor(self) -> int:
        """The Kubernetes minor version of the lab's profile."""
        return kube_minor(self.cfg)

    # ------------------------------------------------------------------ running commands

    def _guarded(self, what: str, limit: float, call) -> Result:
        """``call()``'s Result; a runner error becomes a Result too: a timeout (exit 124) saying
        what timed out and after how long, anything else (exit 255) with its text."""
        start = self.clock()
        try:
            return call()
        except LabError as exc:
            if _is_timeout(exc, self.clock() - start, limit):
                return Result(TIMEOUT_RC, "", f"{what} timed out after {limit:.0f} s")
            return Result(NOT_RUN_RC, "", str(exc))

    def kubectl_run(self, args: Sequence[str], input: Optional[str] = None, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        """``kubectl ARGS`` without raising; the caller reads the result."""
        return self._guarded(f"kubectl {' '.join(args[:3])}", timeout,
                             lambda: self.lab.kubectl(list(args), input=input, check=False, timeout=timeout))

    def exec_in(self, namespace: str, pod: str, command: Sequence[str]) -> Result:
        """``kubectl exec`` a command in a pod."""
        return self.kubectl_run(["exec", "-n", namespace, pod, "--", *command])

    def node_run(self, node: str, command: str, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        """Run a shell command as root on a node, without raising."""
        return self._guarded(f"the command on {node}", timeout,
                             lambda: self.lab.runner.run(node, command, check=False, timeout=timeout))

    # ------------------------------------------------------------------ kubectl helpers

    def get_json(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, cached for the run.

        Raises :class:`CommandTimeout` when kubectl ran out of time, LabError on another failure.
        """
        key = ("get",) + tuple(args)
        if key not in self.cache:
            result = self.kubectl_run(["get", *args, "-o", "json"])
            if result.returncode == TIMEOUT_RC:
                raise CommandTimeout(f"kubectl get {' '.join(args)} (on {self.cfg.control_plane.name})", COMMAND_TIMEOUT_S)
            if not result.ok:
                raise LabError(f"kubectl get {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
            self.cache[key] = json.loads(result.stdout or "{}")
        return self.cache[key]

    def try_get_json(self, *args: str) -> Optional[dict]:
        """Like :meth:`get_json` but None when kubectl fails (e.g. the resource type is not served);
        a timeout still raises :class:`CommandTimeout`."""
        try:
            return self.get_json(*args)
        except CommandTimeout:
            raise
        except LabError:
            return None

    # ------------------------------------------------------------------ client pods

    def client_image(self) -> str:
        """The client pod image of the lab's profile."""
        return self.cfg.profile.client_image

    def client_names(self) -> Dict[str, str]:
        """Node name -> the name of its client pod."""
        return {node.name: CLIENT_NAME_PREFIX + node.name for node in self.cfg.nodes}

    def client_manifest(self) -> dict:
        """A v1 List of one client pod pinned to each node (tolerating every taint)."""
        items = []
        for node, name in self.client_names().items():
            items.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": WORKLOAD_NAMESPACE,
                    "labels": {CLIENT_LABEL_KEY: CLIENT_LABEL_VALUE, CLIENT_ROLE_KEY: CLIENT_ROLE_VALUE},
                },
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "client", "image": self.client_image(), "args": ["pause"]}],
                },
            })
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def _fail_clients(self, text: str) -> ClientError:
        self._client_error = text
        return ClientError(text)

    def clients(self) -> Dict[str, str]:
        """Node name -> client pod name; creates the pods and waits for them on first use, once a run.

        Client pods an earlier run left are removed first (and waited for). Raises
        :class:`ClientError` (once, then again on every call, without waiting again) when
        they cannot be made ready within :data:`CLIENT_READY_TIMEOUT_S`; what kept each one
        from Ready is kept for :meth:`client_image_findings`.
        """
        if self._clients is not None:
            return self._clients
        if self._client_error is not None:
            raise ClientError(self._client_error)
        self.objects_created = True
        names = self.client_names()
        cleared = self.kubectl_run(["delete", "pod", "-n", WORKLOAD_NAMESPACE, *names.values(), "--ignore-not-found",
                                    "--wait=true", f"--timeout={DELETE_TIMEOUT_S}s"], timeout=runner_timeout(DELETE_TIMEOUT_S))
        if not cleared.ok:
            raise self._fail_clients("could not remove the client pods an earlier run left: "
                                     f"{(cleared.stderr or cleared.stdout).strip()}")
        applied = self.kubectl_run(["apply", "-f", "-"], input=json.dumps(self.client_manifest()))
        if not applied.ok:
            raise self._fail_clients(f"could not create the client pods: {(applied.stderr or applied.stdout).strip()}")
        ready = self.kubectl_run(["wait", "-n", WORKLOAD_NAMESPACE, "--for=condition=Ready",
                                  *[f"pod/{name}" for name in names.values()], f"--timeout={CLIENT_READY_TIMEOUT_S}s"],
                                 timeout=runner_timeout(CLIENT_READY_TIMEOUT_S))
        if not ready.ok:
            self._client_wait_text = (ready.stderr or ready.stdout).strip() or "no answer"
            states = self.kubectl_run(["get", "pods", "-n", WORKLOAD_NAMESPACE, "-l", CLIENT_SELECTOR, "-o", "json"])
            try:
                pods = json.loads(states.stdout) if states.ok else {}
            except ValueError:
                pods = {}
            by_name = {(p.get("metadata") or {}).get("name"): p for p in (pods or {}).get("items") or []}
            for node, name in names.items():
                pod = by_name.get(name)
                if pod is None or not _ready(pod):
                    self._client_waiting[node] = "; ".join(pod_waiting(pod)) if pod is not None else "not created"
            why = [f"{names[node]}: {text}" for node, text in self._client_waiting.items()]
            raise self._fail_clients(f"client pods ({self.client_image()}) not Ready within {CLIENT_READY_TIMEOUT_S} s: "
                                     f"{self._client_wait_text}"
                                     + (f"; {'; '.join(why)}" if why else ""))
        self._clients = dict(names)
        return self._clients

    def client_image_findings(self) -> List[Finding]:
        """Nothing once the client pods are Ready (so the client image is on every node);
        else a finding per node whose client pod is not, with its waiting reason
        (``ErrImagePull``, ``ImagePullBackOff`` and the message of the pod status). Makes
        the client pods first, once a run: a check creating pods of that image returns
        these at once instead of waiting again."""
        try:
            self.clients()
            return []
        except ClientError as exc:
            image = self.client_image()
            want = f"client pods of {image} Ready within {CLIENT_READY_TIMEOUT_S} s (the image of verify's own pods)"
            if not self._client_waiting:
                return [Finding(f"{exc}; verify's own pods were not created", want, "not Ready", LOOK_CLIENTS)]
            names = self.client_names()
            return [Finding(f"{node}: client pod of {image} not Ready within {CLIENT_READY_TIMEOUT_S} s, so verify's own "
                            "pods of that image were not created", want, why,
                            f"`kubectl describe pod -n {WORKLOAD_NAMESPACE} {names[node]}` (image pull from registry.k8s.io? "
                            f"the CNI on {node}?)", node=node, pod=f"{WORKLOAD_NAMESPACE}/{names[node]}",
                            error=self._client_wait_text)
                    for node, why in self._client_waiting.items()]

    def cleanup_objects(self) -> Result:
        """Delete every pod and Service verify labels, client pods included, without waiting
        (safe to run twice, or with none)."""
        self._clients = None
        return self.kubectl_run(["delete", "pods,services", "-n", WORKLOAD_NAMESPACE, "-l", VERIFY_SELECTOR,
                                 "--ignore-not-found", "--wait=false"])


def _ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])
