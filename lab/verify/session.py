"""What the checks of one ``lab.verify`` run share.

:class:`VerifyContext` wraps the lab :class:`~lab.context.Context` (its ``cfg``,
``kubectl``, ``kubectl_json``, ``runner`` and ``state`` are reachable directly), adds a
``host_run`` hook for commands on the host (injectable for tests), caches ``kubectl get``
answers for the run, and owns the short-lived client pods.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..context import Result
from ..errors import LabError
from .model import kube_minor, url_host

try:  # the workload module names where the recipe's nginx runs and how its pods are labelled
    from ..workloads import APP as _APP, NAMESPACE as _NAMESPACE
except ImportError:  # pragma: no cover - workloads not present
    _APP, _NAMESPACE = "my-nginx", "default"

#: Where the recipe's nginx runs and how its pods are labelled.
WORKLOAD_NAMESPACE = _NAMESPACE
WORKLOAD_SELECTOR = {"app": _APP}

#: The label that marks the client pods lab.verify creates (and deletes).
CLIENT_LABEL_KEY = "app.kubernetes.io/managed-by"
CLIENT_LABEL_VALUE = "dslab-verify"
CLIENT_NAME_PREFIX = "dslab-verify-client-"
CLIENT_READY_TIMEOUT = "180s"

#: A client image with curl, dig and sh, per profile. agnhost is the e2e tests' own
#: multi-purpose image (alpine + bind-tools + curl); the 1.17-era tag (2.8) lived on
#: gcr.io/kubernetes-e2e-test-images, so the older profile takes an older registry.k8s.io tag.
CLIENT_IMAGES = {
    "current": "registry.k8s.io/e2e-test-images/agnhost:2.53",
    "seed-2020": "registry.k8s.io/e2e-test-images/agnhost:2.39",
}

#: CoreDNS's cluster domain (kubeadm's default).
CLUSTER_DOMAIN = "cluster.local"
HTTP_TIMEOUT_S = 5
COMMAND_TIMEOUT_S = 120

HostRun = Callable[[Sequence[str]], Result]


def host_run(command: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> Result:
    """Run ``command`` (an argument list, no shell) on the host and capture its output."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        return Result(127, "", str(exc))
    except subprocess.TimeoutExpired:
        return Result(124, "", f"timed out after {timeout}s")
    return Result(done.returncode, done.stdout, done.stderr)


def curl_command(url: str, token: Optional[str] = None) -> List[str]:
    """curl printing only the HTTP status code (000 when no answer)."""
    if token:
        url = f"{url}?dslab-verify={token}"
    return ["curl", "-g", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(HTTP_TIMEOUT_S), url]


def http_url(address, port: int) -> str:
    """``http://addr:port/`` with IPv6 in brackets."""
    return f"http://{url_host(address)}:{port}/"


class ClientError(LabError):
    """The client pods could not be created or did not become ready."""


@dataclass
class VerifyContext:
    """The lab Context plus what one verify run shares (cache, host hook, client pods)."""

    lab: object
    host_run: HostRun = host_run
    cache: Dict[tuple, object] = field(default_factory=dict)
    _clients: Optional[Dict[str, str]] = None
    _client_error: Optional[str] = None
    clients_created: bool = False

    def __getattr__(self, name):
        # Only called for attributes not found normally: cfg, kubectl, runner, state, ...
        if name.startswith("_") or name == "lab":
            raise AttributeError(name)
        return getattr(self.lab, name)

    @property
    def minor(self) -> int:
        """The Kubernetes minor version of the lab's profile."""
        return kube_minor(self.cfg)

    # ------------------------------------------------------------------ kubectl helpers

    def get_json(self, *args: str) -> dict:
        """``kubectl get ARGS -o json``, cached for the run; raises LabError on failure."""
        key = ("get",) + tuple(args)
        if key not in self.cache:
            result = self.lab.kubectl(["get", *args, "-o", "json"], check=False, timeout=COMMAND_TIMEOUT_S)
            if not result.ok:
                raise LabError(f"kubectl get {' '.join(args)} failed: {(result.stderr or result.stdout).strip()}")
            self.cache[key] = json.loads(result.stdout or "{}")
        return self.cache[key]

    def try_get_json(self, *args: str) -> Optional[dict]:
        """Like :meth:`get_json` but None when kubectl fails (e.g. the resource type is not served)."""
        try:
            return self.get_json(*args)
        except LabError:
            return None

    def kubectl_run(self, args: Sequence[str], input: Optional[str] = None) -> Result:
        """``kubectl ARGS`` without raising; the caller reads the result."""
        return self.lab.kubectl(list(args), input=input, check=False, timeout=COMMAND_TIMEOUT_S)

    def exec_in(self, namespace: str, pod: str, command: Sequence[str]) -> Result:
        """``kubectl exec`` a command in a pod."""
        return self.kubectl_run(["exec", "-n", namespace, pod, "--", *command])

    def node_run(self, node: str, command: str) -> Result:
        """Run a shell command as root on a node, without raising."""
        return self.lab.runner.run(node, command, check=False, timeout=COMMAND_TIMEOUT_S)

    # ------------------------------------------------------------------ client pods

    def client_image(self) -> str:
        """The client pod image of the lab's profile."""
        return CLIENT_IMAGES.get(self.cfg.profile.name, CLIENT_IMAGES["current"])

    def client_manifest(self) -> dict:
        """A v1 List of one client pod pinned to each node (tolerating every taint)."""
        items = []
        for node in self.cfg.nodes:
            items.append({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": CLIENT_NAME_PREFIX + node.name,
                    "namespace": WORKLOAD_NAMESPACE,
                    "labels": {CLIENT_LABEL_KEY: CLIENT_LABEL_VALUE},
                },
                "spec": {
                    "nodeName": node.name,
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "client", "image": self.client_image(), "args": ["pause"]}],
                },
            })
        return {"apiVersion": "v1", "kind": "List", "items": items}

    def clients(self) -> Dict[str, str]:
        """Node name -> client pod name; creates the pods on first use.

        Raises :class:`ClientError` (once, then again on every call) when they cannot be made ready.
        """
        if self._clients is not None:
            return self._clients
        if self._client_error is not None:
            raise ClientError(self._client_error)
        self.clients_created = True
        selector = f"{CLIENT_LABEL_KEY}={CLIENT_LABEL_VALUE}"
        applied = self.kubectl_run(["apply", "-f", "-"], input=json.dumps(self.client_manifest()))
        if not applied.ok:
            self._client_error = f"could not create the client pods: {(applied.stderr or applied.stdout).strip()}"
            raise ClientError(self._client_error)
        ready = self.kubectl_run(["wait", "-n", WORKLOAD_NAMESPACE, "--for=condition=Ready", "pod",
                                  "-l", selector, f"--timeout={CLIENT_READY_TIMEOUT}"])
        if not ready.ok:
            self._client_error = (f"client pods ({self.client_image()}) not Ready within {CLIENT_READY_TIMEOUT}: "
                                  f"{(ready.stderr or ready.stdout).strip()}")
            raise ClientError(self._client_error)
        self._clients = {node.name: CLIENT_NAME_PREFIX + node.name for node in self.cfg.nodes}
        return self._clients

    def cleanup_clients(self) -> Result:
        """Delete every pod carrying the client label (safe to run twice, or with none)."""
        self._clients = None
        return self.kubectl_run(["delete", "pod", "-n", WORKLOAD_NAMESPACE, "-l",
                                 f"{CLIENT_LABEL_KEY}={CLIENT_LABEL_VALUE}", "--ignore-not-found", "--wait=false"])
