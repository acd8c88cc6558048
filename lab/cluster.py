"""The cluster steps of ``lab.up``: node preparation to kubeconfig, as the recipe does them.

Each step runs the matching script of ``provision/`` on the nodes (in parallel where the
recipe allows), with the node's rendered inputs; the scripts check before they act, so a
step can always be run again.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Optional, Set

from . import cache_steps, calico, kubeadm, nodeenv, profiles, waits
from . import kubeconfig as lab_kubeconfig
from .config import Node
from .context import Context
from .errors import StepError
from .nodefiles import upload_inputs
from .render import JOIN_TOKEN_KEY, bootstrap_token, join_token

REMOTE_DIR = nodeenv.REMOTE_DIR
REMOTE_ENV = nodeenv.ENV_FILE
REMOTE_KUBEADM = nodeenv.KUBEADM_CONFIG
REMOTE_JOIN = nodeenv.KUBEADM_JOIN_CONFIG
REMOTE_CALICO_UPSTREAM = f"{REMOTE_DIR}/calico-upstream.yaml"
REMOTE_CALICO = f"{REMOTE_DIR}/calico.yaml"
REMOTE_CACHE = "/var/cache/dslab"
FETCH = nodeenv.FETCH
ADMIN_CONF = "/etc/kubernetes/admin.conf"
CA_CERT = "/etc/kubernetes/pki/ca.crt"
KUBECONFIG_MODE = 0o600
JOIN_SCRIPT = f"{REMOTE_DIR}/provision/join.sh"
#: Exit 0 when join.sh will run ``kubeadm join`` on the node, 1 when it has joined.
JOIN_PENDING = ["bash", JOIN_SCRIPT, "--pending"]
_clock = time.monotonic
_sleep = time.sleep
_now = lambda: datetime.now(timezone.utc)  # noqa: E731 - replaced by tests


def on_nodes(nodes: Iterable[Node], action: Callable[[Node], None], ctx: Optional[Context] = None,
             what: str = "") -> None:
    """Run ``action`` for every node in parallel; raise the first failure after all finished.

    With ``ctx``, its progress shows ``what`` and the nodes still at it.
    """
    nodes = list(nodes)
    pending = [node.name for node in nodes]
    lock = threading.Lock()

    def show() -> None:
        if ctx is not None and pending:
            ctx.progress.action(f"{what} on {', '.join(pending)}" if what else ", ".join(pending))

    def one(node: Node) -> None:
        try:
            action(node)
        finally:
            with lock:
                pending.remove(node.name)
                show()

    show()
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        futures = [pool.submit(one, node) for node in nodes]
    for future in futures:
        future.result()


def script_step(*scripts: str, nodes: Callable[[Context], Iterable[Node]] = lambda ctx: ctx.cfg.nodes):
    """A step that runs ``scripts``, in order, on every node of ``nodes(ctx)`` in parallel."""
    def step(ctx: Context) -> None:
        def on_node(node: Node) -> None:
            upload_inputs(ctx, node)
            for script in scripts:
                ctx.runner.run(node.name, ["bash", f"{REMOTE_DIR}/provision/{script}", REMOTE_ENV])
        on_nodes(nodes(ctx), on_node, ctx, " and ".join(scripts))
    return step


_prepare = script_step("prepare.sh")
runtime = script_step("runtime.sh")
_kubernetes = script_step("cri-dockerd.sh", "kubernetes.sh")


def prepare(ctx: Context) -> None:
    """The package managers keep what they download, the cached packages of the last lab are put
    back (:func:`lab.cache_steps.restore_packages`), then ``prepare.sh``."""
    cache_steps.restore_packages(ctx)
    _prepare(ctx)


def kubernetes(ctx: Context) -> None:
    """cri-dockerd's and the node tarball copied from the host's cache where the scripts fetch
    them, then ``cri-dockerd.sh`` and ``kubernetes.sh``."""
    cache_steps.push_kubernetes_files(ctx)
    _kubernetes(ctx)


def images(ctx: Context) -> None:
    """Every cached image of the profile loaded on every node that lacks it (before anything pulls)."""
    cache_steps.load_images(ctx)


def control_plane(ctx: Context) -> None:
    """``kubeadm config images pull`` and ``kubeadm init`` with the rendered config."""
    node = ctx.cfg.control_plane
    config = kubeadm.render_init(ctx.cfg, bootstrap_token(ctx.state))
    digest = hashlib.sha256(config.encode()).hexdigest()
    applied = ctx.state.get("kubeadm_applied")
    initialised = ctx.runner.run(node.name, ["test", "-e", nodeenv.INIT_DONE], check=False).ok
    if not initialised and applied is not None and ctx.runner.run(node.name, ["test", "-e", ADMIN_CONF],
                                                                  check=False).ok:
        # Initialised by a version of the lab that kept no marker on the node: its state records
        # that control-plane.sh succeeded (kubeadm_applied is set only then).
        ctx.runner.run(node.name, f"mkdir -p {shlex.quote(os.path.dirname(nodeenv.INIT_DONE))} && "
                                  f"date -u +%Y-%m-%dT%H:%M:%SZ > {shlex.quote(nodeenv.INIT_DONE)}")
        initialised = True
    if not initialised:
        ctx.state.delete("kubeadm_applied")  # of a cluster gone with its machines, or never completed
    if initialised and applied not in (None, digest):
        raise StepError("control-plane", "the kubeadm configuration changed after `kubeadm init` (subnets, "
                        "addresses or versions cannot change on a running cluster); run `invoke lab.destroy`, "
                        "then `invoke lab.up`", ctx.log_path)
    upload_inputs(ctx, node)
    ctx.runner.put_text(node.name, config, REMOTE_KUBEADM, "0600")
    ctx.progress.action(f"kubeadm config images pull and kubeadm init on {node.name}")
    ctx.runner.run(node.name, ["bash", f"{REMOTE_DIR}/provision/control-plane.sh", REMOTE_ENV])
    ctx.state.set("kubeadm_applied", digest)
    pem = ctx.runner.run(node.name, ["cat", CA_CERT]).stdout.encode()
    ctx.state.set("ca_cert_hash", kubeadm.ca_cert_hash(pem))


def cni(ctx: Context) -> None:
    """Fetch the pinned Calico manifest on the control plane, edit it for dual-stack, apply it.

    Where the pin is a release archive (Calico 3.11), the manifest is its member, and the
    archive's image tarballs are loaded on every node first, so no node pulls them.
    """
    node = ctx.cfg.control_plane.name
    profile = ctx.cfg.profile
    pin = profile.calico_manifest
    missing = profiles.step_pin_problems(profile, ctx.cfg.runtime, "cni")
    if missing:
        raise StepError("cni", f"profile {profile.name}: {'; '.join(missing)}; pin it in lab/profiles.py", ctx.log_path)
    if pin.member:
        archive = f"{REMOTE_CACHE}/{pin.url.rstrip('/').rsplit('/', 1)[-1]}"

        def fetch_archive(target: Node) -> None:
            upload_inputs(ctx, target)
            cache_steps.push(ctx, target.name, pin, archive)
            ctx.runner.run(target.name, ["bash", FETCH, *pin.fetch_args(archive)])
            if profile.calico_images:
                ctx.runner.run(target.name, ["bash", f"{REMOTE_DIR}/provision/load-images.sh", archive,
                                             *profile.calico_images])
        on_nodes(ctx.cfg.nodes if profile.calico_images else [ctx.cfg.control_plane], fetch_archive, ctx,
                 "Calico's release archive" + (" and its images" if profile.calico_images else ""))
        ctx.runner.run(node, f"tar -xzOf {shlex.quote(archive)} {shlex.quote(pin.member)} > "
                             f"{shlex.quote(REMOTE_CALICO_UPSTREAM)}")
    else:
        ctx.progress.action(f"Calico {profile.calico_version} manifest on {node}")
        cache_steps.push(ctx, node, pin, REMOTE_CALICO_UPSTREAM)
        ctx.runner.run(node, ["bash", FETCH, *pin.fetch_args(REMOTE_CALICO_UPSTREAM)])
    upstream = ctx.runner.run(node, ["cat", REMOTE_CALICO_UPSTREAM]).stdout
    edited = calico.edit_manifest(upstream, ctx.cfg)
    digest = hashlib.sha256(edited.encode()).hexdigest()
    present = ctx.kubectl(["-n", "kube-system", "get", "daemonset", "calico-node", "-o", "name"], check=False).ok
    if not present or ctx.state.get("calico_applied") != digest:
        ctx.runner.put_text(node, edited, REMOTE_CALICO)
        ctx.kubectl(["apply", "-f", REMOTE_CALICO])
        ctx.state.set("calico_applied", digest)
    waits.wait_rollout(ctx, "kube-system", "daemonset/calico-node", ctx.cfg.ready_timeout, step="cni")


#: A token with less time left than this is not used for a join: the join could outlast it.
TOKEN_MIN_LEFT_S = 15 * 60


def usable_tokens(listing: str, now: datetime) -> Set[str]:
    """The tokens of ``kubeadm token list`` (its text table) valid for at least :data:`TOKEN_MIN_LEFT_S`.

    Every kubeadm from 1.17 on prints ``TOKEN TTL EXPIRES USAGES DESCRIPTION EXTRA GROUPS``:
    EXPIRES in RFC 3339 or ``<never>``, TTL ``<invalid>`` once expired (an expired token is
    listed until kube-controller-manager's tokencleaner deletes it).
    """
    usable = set()
    for line in listing.splitlines():
        words = line.split()
        if len(words) < 3 or not kubeadm.TOKEN_RE.match(words[0]) or words[1] == "<invalid>":
            continue
        if words[2] == "<never>":
            usable.add(words[0])
            continue
        try:
            expires = datetime.fromisoformat(words[2].replace("Z", "+00:00"))
        except ValueError:
            continue
        if expires.tzinfo is not None and (expires - now).total_seconds() >= TOKEN_MIN_LEFT_S:
            usable.add(words[0])
    return usable


def ensure_token(ctx: Context) -> str:
    """A bootstrap token valid for this join: the recorded one while the cluster lists it with time
    left, else a fresh one, created on the control plane and recorded as the lab's join token.

    Neither the list nor the creation is logged: both handle the token.
    """
    node = ctx.cfg.control_plane.name
    token = join_token(ctx.state)
    listed = ctx.runner.run(node, ["kubeadm", "token", "list"], check=False, secret=True)
    if kubeadm.TOKEN_RE.match(token) and token in usable_tokens(listed.stdout, _now()):
        return token
    token = kubeadm.new_token()
    ctx.runner.run(node, ["kubeadm", "token", "create", token, "--ttl", kubeadm.TOKEN_TTL], secret=True)
    ctx.state.set(JOIN_TOKEN_KEY, token)
    return token


def join(ctx: Context) -> None:
    """Workers join in parallel (CA pinned); then every node must become Ready."""
    ca_hash = ctx.state.get("ca_cert_hash")
    if not ca_hash:
        raise StepError("join", "the CA certificate hash is unknown; run `invoke lab.up` from control-plane")
    token = ensure_token(ctx)

    def join_one(node: Node) -> None:
        upload_inputs(ctx, node)
        # When join.sh will (re)join, an earlier registration under this name would make kubeadm
        # refuse ("a Node with name ... already exists"). Any other answer (ssh failed) deletes nothing.
        pending = ctx.runner.run(node.name, JOIN_PENDING, check=False)
        if pending.returncode == 0:
            ctx.kubectl(["delete", "node", node.name, "--ignore-not-found"])
        elif pending.returncode != 1:
            raise StepError("join", f"{node.name}: cannot tell whether it has joined (exit {pending.returncode}: "
                            f"{(pending.stderr or pending.stdout).strip()[-200:]})", ctx.log_path)
        ctx.runner.put_text(node.name, kubeadm.render_join(ctx.cfg, node, token, ca_hash), REMOTE_JOIN, "0600")
        ctx.runner.run(node.name, ["bash", JOIN_SCRIPT, REMOTE_ENV])

    on_nodes(ctx.cfg.workers, join_one, ctx, "kubeadm join")
    deadline = _clock() + ctx.cfg.ready_timeout
    for node in ctx.cfg.nodes:
        waits.wait_node_ready(ctx, node.name, deadline, clock=_clock, sleep=_sleep)


def kubeconfig_path(ctx: Context) -> Path:
    """Where the admin kubeconfig is kept on the host."""
    return ctx.layout.kubeconfig


def fetch_kubeconfig(ctx: Context) -> None:
    """Copy the admin kubeconfig to the state directory, mode 0600."""
    text = ctx.runner.run(ctx.cfg.control_plane.name, ["cat", ADMIN_CONF], secret=True).stdout
    text = lab_kubeconfig.for_lab(text, ctx.cfg.name)  # cluster, user and context dslab-<name>
    path = kubeconfig_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KUBECONFIG_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, KUBECONFIG_MODE)
