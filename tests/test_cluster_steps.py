"""Cluster steps against a recording fake of the nodes: waits, retries and what a failure says.

The pod, event and node objects below have the shapes the 1.36 API returns (core/v1 Pod
``status.containerStatuses[].state.waiting``, Event ``involvedObject``, Node conditions),
with the messages the kubelet and dockerd write for the failures a lab meets most.
"""

from __future__ import annotations

import json

import pytest

import lab.config
from lab import cluster, nodeenv, waits
from lab.context import Context, Result, State
from lab.errors import StepError

IMAGE = "docker.io/library/nginx:1.30"
RATE_LIMITED = (f'Failed to pull image "{IMAGE}": Error response from daemon: toomanyrequests: You have reached '
                "your pull rate limit. You may increase the limit by authenticating and upgrading: "
                "https://www.docker.com/increase-rate-limit")


def pod(name, node, waiting=None, last=None, namespace="default", phase="Pending", conditions=None):
    status = {"phase": phase, "conditions": conditions or []}
    if waiting is not None:
        cs = {"name": "nginx", "image": IMAGE, "ready": False, "restartCount": 3, "state": {"waiting": waiting}}
        if last:
            cs["lastState"] = {"terminated": last}
        status["containerStatuses"] = [cs]
    spec = {"containers": [{"name": "nginx", "image": IMAGE}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": status}


def events(*items):
    return {"kind": "EventList", "items": [
        {"involvedObject": {"kind": "Pod", "name": p, "namespace": "default"}, "type": "Warning",
         "reason": reason, "message": message, "lastTimestamp": f"2026-12-01T10:00:0{i}Z"}
        for i, (p, reason, message) in enumerate(items)]}


def test_image_pull_backoff_names_the_image_and_docker_hubs_limit():
    pods = {"items": [pod("my-nginx-1", "k8s-worker01",
                          {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{IMAGE}"'})]}
    found = waits.pod_problems(pods, events(("my-nginx-1", "Failed", RATE_LIMITED),
                                            ("my-nginx-1", "Failed", "Error: ImagePullBackOff")))
    assert len(found) == 1
    assert found[0].startswith(f"pod default/my-nginx-1 on k8s-worker01: image {IMAGE} cannot be pulled "
                               "(ImagePullBackOff): Failed to pull image")
    assert "toomanyrequests" in found[0] and "anonymous pull limit" in found[0]


def test_err_image_pull_without_events_keeps_the_kubelets_message():
    pods = {"items": [pod("x", "k8s-worker02", {"reason": "ErrImagePull",
                                                "message": "manifest for nginx:1.99 not found: manifest unknown"})]}
    assert waits.pod_problems(pods, None) == [
        f"pod default/x on k8s-worker02: image {IMAGE} cannot be pulled (ErrImagePull): "
        "manifest for nginx:1.99 not found: manifest unknown"]


def test_crash_loop_names_the_container_exit_and_logs_command():
    pods = {"items": [pod("y", "k8s-worker01", {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"},
                          last={"exitCode": 1, "reason": "Error"}, phase="Running")]}
    assert waits.pod_problems(pods, None) == [
        "pod default/y on k8s-worker01: container nginx CrashLoopBackOff, last exit 1 (Error): back-off 40s "
        "restarting; see `kubectl -n default logs y -c nginx --previous`"]


def test_unschedulable_and_healthy_pods():
    healthy = pod("ok", "k8s-worker01", phase="Running")
    healthy["status"]["containerStatuses"] = [{"name": "nginx", "image": IMAGE, "ready": True,
                                               "state": {"running": {"startedAt": "2026-12-01T10:00:00Z"}}}]
    pending = pod("z", None, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/3 nodes are available: 1 node(s) had untolerated taint"}])
    assert waits.pod_problems({"items": [healthy, pending]}) == [
        "pod default/z: not scheduled (Unschedulable): 0/3 nodes are available: 1 node(s) had untolerated taint"]
    assert waits.pod_problems({"items": [healthy]}) == []


def test_only_the_pods_of_the_node_when_asked():
    pods = {"items": [pod("a", "k8s-worker01", {"reason": "ErrImagePull", "message": "m1"}),
                      pod("b", "k8s-worker02", {"reason": "ErrImagePull", "message": "m2"})]}
    assert [p.split(":")[0] for p in waits.pod_problems(pods, None, node="k8s-worker02")] == [
        "pod default/b on k8s-worker02"]


# --------------------------------------------------------------------------- a fake cluster


class FakeNodes:
    """Answers kubectl and node commands from a script of results; records every call."""

    def __init__(self, answers):
        self.answers = answers  # list of (predicate on argv, Result or callable)
        self.calls = []

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        argv = list(command) if not isinstance(command, str) else [command]
        self.calls.append((node, argv))
        words = argv[3:] if argv[:1] == ["kubectl"] else argv
        for match, answer in self.answers:
            if match(words):
                result = answer(words) if callable(answer) else answer
                break
        else:
            result = Result(0, "", "")
        if check and not result.ok:
            raise StepError("fake", result.stderr)
        return result

    def put_tree(self, node, local, remote):
        self.calls.append((node, ["put_tree", remote]))

    def put_text(self, node, text, remote, mode="0644"):
        self.calls.append((node, ["put_text", remote]))


def context(tmp_path, runner, **settings):
    cfg = lab.config.load({"state_dir": str(tmp_path / "state"), "ready_timeout": 60, **settings})
    return Context(cfg, State(tmp_path / "state.json"), runner)


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(cluster, "_clock", lambda: now[0])
    monkeypatch.setattr(cluster, "_sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


NOT_FOUND = Result(1, "", 'Error from server (NotFound): nodes "k8s-worker02" not found')


def get_node(name):
    return lambda w: w[:3] == ["get", "node", name] and "name" in w


def test_ready_wait_first_waits_for_the_node_to_register(tmp_path, clock):
    registered_at = 20.0
    runner = FakeNodes([
        (get_node("k8s-worker02"), lambda w: Result(0, "node/k8s-worker02") if clock[0] >= registered_at else NOT_FOUND),
    ])
    ctx = context(tmp_path, runner)
    waits_seen = []
    original = runner.run

    def run(node, command, **kw):
        if list(command)[3:4] == ["wait"]:
            waits_seen.append((clock[0], list(command)))
        return original(node, command, **kw)
    runner.run = run
    waits.wait_node_ready(ctx, "k8s-worker02", 60.0, clock=cluster._clock, sleep=cluster._sleep)
    assert len(waits_seen) == 1
    at, argv = waits_seen[0]
    assert at >= registered_at  # kubectl wait only once the Node exists
    assert argv[-1] == f"--timeout={int(60 - at)}s"  # the same deadline, not a second full budget


def test_a_node_that_never_registers_says_so(tmp_path, clock):
    ctx = context(tmp_path, FakeNodes([(get_node("k8s-worker02"), NOT_FOUND)]))
    with pytest.raises(StepError) as err:
        waits.wait_node_ready(ctx, "k8s-worker02", 60.0, clock=cluster._clock, sleep=cluster._sleep)
    assert "node k8s-worker02 did not register with the API server within 60 s" in err.value.reason
    assert 60 <= clock[0] <= 60 + waits.POLL_SECONDS


def test_a_registered_node_that_is_not_ready_says_why(tmp_path, clock):
    node = {"metadata": {"name": "k8s-worker02"}, "status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
         "message": "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
                    "message:docker: network plugin is not ready: cni config uninitialized"}]}}
    calico_pod = pod("calico-node-abcde", "k8s-worker02", {"reason": "ImagePullBackOff", "message": "Back-off"},
                     namespace="kube-system")
    runner = FakeNodes([
        (get_node("k8s-worker02"), Result(0, "node/k8s-worker02")),
        (lambda w: w[:1] == ["wait"], Result(1, "", "error: timed out waiting for the condition on nodes/k8s-worker02")),
        (lambda w: w[:3] == ["get", "node", "k8s-worker02"], Result(0, json.dumps(node))),
        (lambda w: w[:4] == ["-n", "kube-system", "get", "pods"], Result(0, json.dumps({"items": [calico_pod]}))),
        (lambda w: w[:4] == ["-n", "kube-system", "get", "events"], Result(0, json.dumps({"items": []}))),
    ])
    ctx = context(tmp_path, runner)
    with pytest.raises(StepError) as err:
        waits.wait_node_ready(ctx, "k8s-worker02", 60.0, clock=cluster._clock, sleep=cluster._sleep)
    reason = err.value.reason
    assert reason.startswith("node k8s-worker02 registered but is not Ready after 60 s")
    assert "Ready=False (KubeletNotReady): container runtime network not ready" in reason
    assert "pod kube-system/calico-node-abcde on k8s-worker02: image" in reason


def test_rollout_timeout_names_the_pull_failure(tmp_path):
    pods = {"items": [pod("my-nginx-1", "k8s-worker01", {"reason": "ImagePullBackOff", "message": "Back-off"})]}
    runner = FakeNodes([
        (lambda w: "rollout" in w, Result(1, "", 'error: timed out waiting for the condition')),
        (lambda w: w[:4] == ["-n", "default", "get", "pods"], Result(0, json.dumps(pods))),
        (lambda w: w[:4] == ["-n", "default", "get", "events"], Result(0, json.dumps(events(("my-nginx-1", "Failed", RATE_LIMITED))))),
    ])
    ctx = context(tmp_path, runner)
    with pytest.raises(StepError) as err:
        waits.wait_rollout(ctx, "default", "deployment/my-nginx", 60)
    assert "default/deployment/my-nginx is not ready after 60 s" in err.value.reason
    assert f"image {IMAGE} cannot be pulled (ImagePullBackOff)" in err.value.reason
    assert "anonymous pull limit" in err.value.reason


# --------------------------------------------------------------------------- join and init, host side


@pytest.mark.parametrize("joined", [set(), {"k8s-worker01"}, {"k8s-worker01", "k8s-worker02"}])
def test_join_deletes_a_stale_node_object_only_before_joining_again(tmp_path, clock, joined):
    runner = FakeNodes([(get_node(n), Result(0, f"node/{n}")) for n in ("k8s-master01", "k8s-worker01", "k8s-worker02")])
    original = runner.run

    def run(node, command, **kw):
        if list(command) == cluster.JOIN_PENDING:
            runner.calls.append((node, list(command)))
            return Result(1 if node in joined else 0)
        return original(node, command, **kw)
    runner.run = run
    ctx = context(tmp_path, runner)
    ctx.state.set("ca_cert_hash", "sha256:" + "a" * 64)
    cluster.join(ctx)
    deleted = [argv[5] for _n, argv in runner.calls if argv[3:5] == ["delete", "node"]]
    assert sorted(deleted) == sorted({"k8s-worker01", "k8s-worker02"} - joined)
    for name in deleted:
        delete = next(i for i, (_n, a) in enumerate(runner.calls) if a[3:5] == ["delete", "node"] and a[5] == name)
        join = next(i for i, (n, a) in enumerate(runner.calls) if n == name and a == ["bash", cluster.JOIN_SCRIPT, nodeenv.ENV_FILE])
        assert delete < join


def test_changed_kubeadm_config_refused_only_after_a_completed_init(tmp_path):
    def runner_for(done):
        return FakeNodes([
            (lambda w: w == ["test", "-e", nodeenv.INIT_DONE], Result(0 if done else 1)),
            (lambda w: w == ["test", "-e", cluster.ADMIN_CONF], Result(1)),
            (lambda w: w[:1] == ["cat"], Result(1, "", "stop here")),
        ])
    ctx = context(tmp_path, runner_for(True))
    ctx.state.set("kubeadm_applied", "an older digest")
    with pytest.raises(StepError) as err:
        cluster.control_plane(ctx)
    assert "kubeadm configuration changed after `kubeadm init`" in err.value.reason
    # admin.conf of a half-done init is no reason to refuse: the script resets and inits again
    ctx = context(tmp_path / "b", runner_for(False))
    ctx.state.set("kubeadm_applied", "an older digest")
    with pytest.raises(StepError) as err:
        cluster.control_plane(ctx)
    assert err.value.reason == "stop here"
    assert any(a[:2] == ["bash", f"{nodeenv.REMOTE_DIR}/provision/control-plane.sh"] for _n, a in ctx.runner.calls)


# --------------------------------------------------------------------------- cni from a release archive


def test_calico_311_comes_from_its_release_archive_with_images_loaded_everywhere(tmp_path, monkeypatch):
    manifest = (__import__("pathlib").Path(__file__).parent / "fixtures" / "calico-3.11.yaml").read_text()
    runner = FakeNodes([
        (lambda w: w == ["cat", cluster.REMOTE_CALICO_UPSTREAM], Result(0, manifest)),
        (lambda w: "rollout" in w, Result(0, "daemon set \"calico-node\" successfully rolled out")),
    ])
    ctx = context(tmp_path, runner, profile="seed-2020")
    pin = ctx.cfg.profile.calico_manifest
    archive = f"{cluster.REMOTE_CACHE}/release-v3.11.3.tgz"
    cluster.cni(ctx)
    by_node = {}
    for node, argv in runner.calls:
        by_node.setdefault(node, []).append(argv)
    for node in ctx.cfg.nodes:
        calls = by_node[node.name]
        fetch = ["bash", nodeenv.FETCH, pin.url, pin.sha256, archive]
        load = ["bash", f"{nodeenv.REMOTE_DIR}/provision/load-images.sh", archive, *ctx.cfg.profile.calico_images]
        assert fetch in calls and load in calls and calls.index(fetch) < calls.index(load)
    cp = by_node[ctx.cfg.control_plane.name]
    extract = next(a for a in cp if a and isinstance(a[0], str) and a[0].startswith("tar -xzOf"))
    assert extract == [f"tar -xzOf {archive} {pin.member} > {cluster.REMOTE_CALICO_UPSTREAM}"]
    # load before apply: no calico pod starts before its image is on the node
    apply = next(i for i, (_n, a) in enumerate(runner.calls) if a[3:4] == ["apply"])
    last_load = max(i for i, (_n, a) in enumerate(runner.calls) if a[1:2] == [f"{nodeenv.REMOTE_DIR}/provision/load-images.sh"])
    assert last_load < apply


def test_calico_331_manifest_is_fetched_as_it_is(tmp_path):
    manifest = (__import__("pathlib").Path(__file__).parent / "fixtures" / "calico-3.31.yaml").read_text()
    runner = FakeNodes([(lambda w: w == ["cat", cluster.REMOTE_CALICO_UPSTREAM], Result(0, manifest))])
    ctx = context(tmp_path, runner)
    cluster.cni(ctx)
    pin = ctx.cfg.profile.calico_manifest
    assert [a for _n, a in runner.calls if a[:2] == ["bash", nodeenv.FETCH]] == [
        ["bash", nodeenv.FETCH, pin.url, pin.sha256, cluster.REMOTE_CALICO_UPSTREAM]]
    assert not any("load-images.sh" in " ".join(map(str, a)) for _n, a in runner.calls)


def test_join_deletes_nothing_when_the_node_cannot_be_asked(tmp_path, clock):
    runner = FakeNodes([(lambda w: w == cluster.JOIN_PENDING, Result(255, "", "ssh: connect to host: timed out"))])
    ctx = context(tmp_path, runner)
    ctx.state.set("ca_cert_hash", "sha256:" + "a" * 64)
    with pytest.raises(StepError) as err:
        cluster.join(ctx)
    assert "cannot tell whether it has joined (exit 255" in err.value.reason
    assert not any(a[3:5] == ["delete", "node"] for _n, a in runner.calls)


@pytest.mark.parametrize("marker, admin, applied, adopted", [
    (False, True, "digest", True),    # initialised by a lab version without markers
    (False, True, None, False),       # admin.conf of a half-done init: control-plane.sh resets
    (False, False, "digest", False),  # new machines
    (True, True, "digest", False),    # marked already
])
def test_an_init_the_lab_recorded_gets_its_marker(tmp_path, marker, admin, applied, adopted):
    from lab import kubeadm
    from lab.render import bootstrap_token
    runner = FakeNodes([
        (lambda w: w == ["test", "-e", nodeenv.INIT_DONE], Result(0 if marker else 1)),
        (lambda w: w == ["test", "-e", cluster.ADMIN_CONF], Result(0 if admin else 1)),
        (lambda w: w[:1] == ["cat"], Result(1, "", "stop here")),
    ])
    ctx = context(tmp_path, runner)
    if applied:
        import hashlib
        config = kubeadm.render_init(ctx.cfg, bootstrap_token(ctx.state))
        ctx.state.set("kubeadm_applied", hashlib.sha256(config.encode()).hexdigest())
    with pytest.raises(StepError):
        cluster.control_plane(ctx)
    wrote = [a for _n, a in runner.calls if a and isinstance(a[0], str) and nodeenv.INIT_DONE in a[0] and "date" in a[0]]
    assert bool(wrote) == adopted


def test_a_recorded_init_of_machines_that_are_gone_is_forgotten_before_init(tmp_path):
    """New machines, then a half-done init: the retry must reset, not adopt the old record."""
    state = {"admin": False}
    runner = FakeNodes([
        (lambda w: w == ["test", "-e", nodeenv.INIT_DONE], Result(1)),
        (lambda w: w == ["test", "-e", cluster.ADMIN_CONF], lambda w: Result(0 if state["admin"] else 1)),
        (lambda w: w[:2] == ["bash", f"{nodeenv.REMOTE_DIR}/provision/control-plane.sh"],
         lambda w: (state.update(admin=True), Result(1, "", "timed out waiting for the condition"))[1]),
    ])
    ctx = context(tmp_path, runner)
    ctx.state.set("kubeadm_applied", "of the machines before")
    with pytest.raises(StepError):
        cluster.control_plane(ctx)
    assert ctx.state.get("kubeadm_applied") is None
    runner.calls.clear()
    with pytest.raises(StepError):
        cluster.control_plane(ctx)
    assert not any(isinstance(a[0], str) and "date -u" in a[0] for _n, a in runner.calls)  # not adopted
