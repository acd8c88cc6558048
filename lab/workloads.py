"""The steps that apply the workloads of :mod:`lab.manifests`: MetalLB from its pinned
manifests, then its address configuration; nginx and its Services.

:func:`deploy_metallb` and :func:`deploy_workloads` apply each document set only when its
content differs from the one recorded in the lab state (or the cluster lacks an object of
it), then wait. The configuration they get is validated (:mod:`lab.validate` checks the
MetalLB ranges hold every LoadBalancer address); a profile download that is not pinned
(:func:`lab.profiles.pin_problem`) stops its step before anything is fetched.

The names of :mod:`lab.manifests` and :mod:`lab.lbplan` that other modules read are
importable from here as well.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time

from . import cache_steps, nodeenv, profiles, waits
from .context import Context
from .errors import StepError
from .lbplan import SVC_DUAL, SVC_IPV4, SVC_IPV6, SVC_IPV6_LOCAL, lb_addresses, lb_needs
from .manifests import (ANNOTATION_LB_IPS, ANNOTATION_POOL_09, APP, LABELS, METALLB_NAMESPACE, NAMESPACE,
                        PORT, REPLICAS, SET_FILES, digest, dump, endpoints, manifests, memberlist_secret,
                        metallb_config, nginx, pool_name, render_manifests, services)
from .settings import LabConfig

__all__ = ["ANNOTATION_LB_IPS", "ANNOTATION_POOL_09", "APP", "LABELS", "METALLB_NAMESPACE", "NAMESPACE", "PORT",
           "REPLICAS", "SET_FILES", "SVC_DUAL", "SVC_IPV4", "SVC_IPV6", "SVC_IPV6_LOCAL", "deploy_metallb",
           "deploy_workloads", "digest", "dump", "endpoints", "lb_addresses", "lb_needs", "manifests",
           "memberlist_secret", "metallb_config", "nginx", "pool_name", "render_manifests", "services",
           "wait_load_balancers"]

REMOTE_MANIFEST_DIR = f"{nodeenv.REMOTE_DIR}/manifests"
FETCH = nodeenv.FETCH
STATE_PREFIX = "workloads.applied."

# Injectable for tests.
_clock = time.monotonic
_sleep = time.sleep
POLL_SECONDS = 5


#: A container's pull policy that asks the registry at every start.
PULL_ALWAYS = re.compile(r"(?m)^([ \t]*(?:- )?)imagePullPolicy: Always[ \t]*$")


def _pull_if_not_present(ctx: Context, node: str, dest: str) -> str:
    """The manifest at ``dest`` as applied: MetalLB 0.9's pulls its images at every pod start
    (``imagePullPolicy: Always``, manifests/metallb.yaml v0.9.8), which a loaded image (the host's
    cache) or a lab without the internet cannot serve; its copy with ``IfNotPresent`` is applied then."""
    text = ctx.runner.run(node, ["cat", dest]).stdout
    edited = PULL_ALWAYS.sub(r"\1imagePullPolicy: IfNotPresent", text)
    if edited == text:
        return dest
    local = (dest[:-len(".yaml")] if dest.endswith(".yaml") else dest) + ".if-not-present.yaml"
    ctx.runner.put_text(node, edited, local)
    return local


def _refuse_unpinned(ctx: Context, step: str) -> None:
    """Stop ``step`` before it fetches anything when a download of its profile is not pinned."""
    missing = profiles.step_pin_problems(ctx.cfg.profile, ctx.cfg.runtime, step)
    if missing:
        raise StepError(step, f"profile {ctx.cfg.profile.name}: {'; '.join(missing)}; pin it in lab/profiles.py",
                        ctx.log_path)


def _remaining(deadline: float) -> int:
    return max(1, int(deadline - _clock()))


def _apply_set(ctx: Context, key: str, text: str, deadline: float, *, retry_webhook: bool = False) -> bool:
    """``kubectl apply`` the set ``key`` unless the state records this exact content and the
    cluster has every object of it (new machines keep no objects but may keep the state).
    True if applied."""
    want = digest(text)
    if ctx.state.get(STATE_PREFIX + key) == want:
        if ctx.kubectl(["get", "-f", "-", "-o", "name"], input=text, check=False).ok:
            return False
    while True:
        result = ctx.kubectl(["apply", "-f", "-"], input=text, check=False, timeout=120)
        if result.ok:
            break
        message = (result.stderr or result.stdout).strip()
        # MetalLB 0.13+ validates its resources with a webhook that answers only once the
        # controller is serving; until then apply fails with "failed calling webhook".
        if retry_webhook and "webhook" in message and _clock() < deadline:
            _sleep(POLL_SECONDS)
            continue
        raise StepError(key, f"kubectl apply failed: {message[-300:]}", ctx.log_path)
    ctx.state.set(STATE_PREFIX + key, want)
    return True


def _install_key(cfg: LabConfig) -> str:
    return digest(json.dumps([[p.url, p.checksum] for p in cfg.profile.metallb_manifests]))


def _remote_path(cfg: LabConfig, url: str) -> str:
    return f"{REMOTE_MANIFEST_DIR}/metallb-v{cfg.profile.metallb_version}-{url.rstrip('/').rsplit('/', 1)[-1]}"


def deploy_metallb(ctx: Context) -> None:
    """Install MetalLB from the pinned manifests, then its address configuration; wait until ready.

    Re-running with unchanged pins and configuration only reads (gets and waits).
    """
    cfg = ctx.cfg
    _refuse_unpinned(ctx, "metallb")
    deadline = _clock() + cfg.ready_timeout
    node = cfg.control_plane.name

    install = _install_key(cfg)
    installed = ctx.state.get(STATE_PREFIX + "metallb-install") == install and ctx.kubectl(
        ["-n", METALLB_NAMESPACE, "get", "deployment/controller", "daemonset/speaker", "-o", "name"], check=False).ok
    if not installed:
        for pin in cfg.profile.metallb_manifests:
            dest = _remote_path(cfg, pin.url)
            cache_steps.push(ctx, node, pin, dest)
            ctx.runner.run(node, ["bash", FETCH, *pin.fetch_args(dest)])
            ctx.kubectl(["apply", "-f", _pull_if_not_present(ctx, node, dest)], timeout=300)
        ctx.state.set(STATE_PREFIX + "metallb-install", install)

    if cfg.profile.legacy_metallb:
        # MetalLB 0.9's speakers need the memberlist key; created once, never rotated here.
        present = ctx.kubectl(["-n", METALLB_NAMESPACE, "get", "secret", "memberlist", "-o", "name"], check=False)
        if not present.ok:
            ctx.kubectl(["create", "-f", "-"], input=dump([memberlist_secret()]))

    waits.wait_rollout(ctx, METALLB_NAMESPACE, "deployment/controller", _remaining(deadline))
    waits.wait_rollout(ctx, METALLB_NAMESPACE, "daemonset/speaker", _remaining(deadline))
    _apply_set(ctx, "metallb-config", dump(metallb_config(cfg)), deadline, retry_webhook=not cfg.profile.legacy_metallb)


def _ingress_families(service: dict) -> set:
    families = set()
    for entry in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or []):
        try:
            families.add(ipaddress.ip_address(entry.get("ip", "")).version)
        except ValueError:
            continue
    return families


def wait_load_balancers(ctx: Context, deadline: float) -> None:
    """Poll until every LoadBalancer Service has an ingress address of each of its families."""
    wanted = {name: {a.version for a in addrs} for name, addrs in lb_addresses(ctx.cfg).items()}
    pending = dict(wanted)
    while True:
        for name in list(pending):
            result = ctx.kubectl(["-n", NAMESPACE, "get", "service", name, "-o", "json"], check=False)
            if result.ok:
                try:
                    have = _ingress_families(json.loads(result.stdout))
                except ValueError:
                    have = set()
                if pending[name] <= have:
                    del pending[name]
        if not pending:
            return
        if _clock() >= deadline:
            name = sorted(pending)[0]
            fams = " and ".join(f"IPv{f}" for f in sorted(pending[name]))
            raise StepError("workloads", f"Service {NAMESPACE}/{name} has no {fams} LoadBalancer address after "
                            f"{ctx.cfg.ready_timeout} s; see `kubectl describe service {name}` and the "
                            f"metallb-system controller log", ctx.log_path)
        _sleep(POLL_SECONDS)


def deploy_workloads(ctx: Context) -> None:
    """Apply nginx and its Services (each set only when changed); wait for pods and LB addresses."""
    cfg = ctx.cfg
    _refuse_unpinned(ctx, "workloads")
    deadline = _clock() + cfg.ready_timeout
    _apply_set(ctx, "nginx", dump(nginx(cfg)), deadline)
    _apply_set(ctx, "services", dump(services(cfg)), deadline)
    waits.wait_rollout(ctx, NAMESPACE, f"deployment/{APP}", _remaining(deadline))
    wait_load_balancers(ctx, deadline)
