"""Waiting for the cluster, and saying why a wait failed when the cluster knows.

A rollout or a node that does not become ready is most often an image that cannot be pulled
(Docker Hub's anonymous limit, a mistyped tag, no route out) or a container that keeps
crashing. The kubelet records both in the pods' container statuses and in events; a failed
wait reads them and names the pod, the image or container, and the registry's own reason,
instead of only "not ready after N s".
"""

from __future__ import annotations

import json
import time
from typing import Callable, List, Optional

from .context import Context
from .errors import StepError

POLL_SECONDS = 5
#: Waiting reasons of a container that will not start by itself (kubelet's ``images`` and
#: ``kuberuntime`` packages: ErrImagePull, ImagePullBackOff, InvalidImageName, ...).
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CRASH_REASONS = ("CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError")
#: Docker Hub's answer when an address used up its anonymous pulls (HTTP 429).
RATE_LIMIT_MARK = "toomanyrequests"
RATE_LIMIT_HINT = ("Docker Hub's anonymous pull limit (10 pulls an hour per IPv4 address or IPv6 /64): "
                   "wait an hour, or `docker login` on the nodes")
MESSAGE_CHARS = 240


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS - 3] + "..."


def _pull_events(events: Optional[dict], namespace: str, pod: str) -> List[str]:
    """Messages of the pod's Warning events about pulling, oldest first."""
    found = []
    items = sorted((events or {}).get("items") or [],
                   key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    for event in items:
        obj = event.get("involvedObject") or {}
        if obj.get("kind") != "Pod" or obj.get("name") != pod or obj.get("namespace", namespace) != namespace:
            continue
        if event.get("type") == "Warning" and event.get("reason") in ("Failed", "ErrImagePull"):
            found.append(event.get("message") or "")
    return found


def pod_problems(pods: dict, events: Optional[dict] = None, node: Optional[str] = None) -> List[str]:
    """One line per container that cannot start, per unschedulable pod (``node``: only pods there)."""
    problems = []
    for pod in (pods or {}).get("items") or []:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        if node is not None and spec.get("nodeName") != node:
            continue
        namespace, name = meta.get("namespace", ""), meta.get("name", "?")
        where = f"pod {namespace}/{name}" + (f" on {spec['nodeName']}" if spec.get("nodeName") else "")
        images = {c.get("name"): c.get("image") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])}
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason", "")
            image = cs.get("image") or images.get(cs.get("name"), "?")
            if reason in PULL_REASONS:
                detail = [m for m in _pull_events(events, namespace, name) if image in m or not image]
                message = detail[-1] if detail else waiting.get("message", "")
                line = f"{where}: image {image} cannot be pulled ({reason}): {_short(message) or 'no message'}"
                if RATE_LIMIT_MARK in message or any(RATE_LIMIT_MARK in m for m in detail):
                    line += f" -- {RATE_LIMIT_HINT}"
                problems.append(line)
            elif reason in CRASH_REASONS:
                last = (cs.get("lastState") or {}).get("terminated") or {}
                exit_text = f", last exit {last['exitCode']}" if "exitCode" in last else ""
                if last.get("reason"):
                    exit_text += f" ({last['reason']})"
                problems.append(f"{where}: container {cs.get('name')} {reason}{exit_text}: "
                                f"{_short(waiting.get('message', '')) or 'no message'}; see `kubectl -n {namespace} "
                                f"logs {name} -c {cs.get('name')} --previous`")
        if status.get("phase") == "Pending" and not spec.get("nodeName"):
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    problems.append(f"{where}: not scheduled ({cond.get('reason', '')}): {_short(cond.get('message', ''))}")
    return problems


def node_problems(node: dict) -> List[str]:
    """The reason a Node is not Ready, as its Ready condition gives it."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return [f"node {node.get('metadata', {}).get('name', '?')}: Ready={cond.get('status')} "
                    f"({cond.get('reason', '')}): {_short(cond.get('message', ''))}"]
    return []


def _json(ctx: Context, args: List[str]) -> Optional[dict]:
    result = ctx.kubectl([*args, "-o", "json"], check=False, timeout=120)
    if not result.ok:
        return None
    try:
        return json.loads(result.stdout)
    except ValueError:
        return None


def explain(ctx: Context, namespace: str, node: Optional[str] = None) -> List[str]:
    """What the cluster says is wrong with the pods of ``namespace`` (those on ``node``)."""
    pods = _json(ctx, ["-n", namespace, "get", "pods"])
    if pods is None:
        return []
    return pod_problems(pods, _json(ctx, ["-n", namespace, "get", "events"]), node)


def _with_reasons(text: str, reasons: List[str]) -> str:
    return text + ("; " + "; ".join(reasons) if reasons else "")


def wait_rollout(ctx: Context, namespace: str, what: str, seconds: int, step: Optional[str] = None) -> None:
    """Wait up to ``seconds`` until ``what`` is rolled out, or fail naming it and why (as ``step``,
    by default the step running)."""
    ctx.progress.action(f"waiting for {namespace}/{what} to roll out")
    result = ctx.kubectl(["-n", namespace, "rollout", "status", what, f"--timeout={seconds}s"],
                         check=False, timeout=seconds + 60)
    if not result.ok:
        reasons = explain(ctx, namespace)
        said = (result.stderr or result.stdout).strip()[-200:]
        raise StepError(step or ctx.step or "wait",
                        _with_reasons(f"{namespace}/{what} is not ready after {seconds} s: {said}", reasons),
                        ctx.log_path)


def wait_node_ready(ctx: Context, name: str, deadline: float, *, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until the Node ``name`` exists, then until it is Ready, both before ``deadline``.

    ``kubectl wait`` on a Node that is not registered yet fails at once with NotFound: the
    registration is waited for first, and a failure says which of the two did not happen.
    """
    timeout = ctx.cfg.ready_timeout
    ctx.progress.action(f"waiting for node {name} to register")
    while not ctx.kubectl(["get", "node", name, "-o", "name"], check=False).ok:
        if clock() >= deadline:
            raise StepError("join", f"node {name} did not register with the API server within {timeout} s "
                            f"(on the node: journalctl -u kubelet)", ctx.log_path)
        sleep(POLL_SECONDS)
    seconds = max(1, int(deadline - clock()))
    ctx.progress.action(f"waiting for node {name} to be Ready")
    result = ctx.kubectl(["wait", "--for=condition=Ready", f"node/{name}", f"--timeout={seconds}s"],
                         check=False, timeout=seconds + 60)
    if not result.ok:
        node = _json(ctx, ["get", "node", name])
        reasons = (node_problems(node) if node else []) + explain(ctx, "kube-system", name)
        raise StepError("join", _with_reasons(f"node {name} registered but is not Ready after {timeout} s "
                                              f"(on the node: journalctl -u kubelet)", reasons), ctx.log_path)
