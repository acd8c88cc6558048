"""The status lines (lab.progress) on a fake terminal and on a pipe: spinner, elapsed time, the
sub-action of a waiting step, --verbose, --quiet, NO_COLOR."""

from __future__ import annotations

import io
import re
import time

import pytest

from lab import cluster, config, waits
from lab.context import Context, Result, State
from lab.errors import StepError
from lab.progress import CLEAR_LINE, FRAMES, Progress

SGR = re.compile(r"\033\[[0-9;]*m")


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def tty_progress(env=None, **options):
    stream, clock = FakeTTY(), Clock()
    progress = Progress(stream, env={"TERM": "xterm-256color"} if env is None else env, clock=clock, animate=False,
                        **options)
    return progress, stream, clock


def frames(text: str):
    """The spinner line as drawn each time (colour removed)."""
    return [SGR.sub("", part) for part in text.split(CLEAR_LINE)[1:] if part and "\n" not in part]


def test_on_a_terminal_the_running_step_is_one_line_with_a_spinner_and_the_elapsed_time():
    progress, stream, clock = tty_progress()
    progress.start("join")
    clock.now += 7
    progress.tick()
    progress.action("waiting for node k8s-worker02 to be Ready")
    clock.now += 5
    progress.tick()
    drawn = frames(stream.getvalue())
    assert drawn[0] == f"{FRAMES[0]} join (0 s)"
    assert drawn[1] == f"{FRAMES[1]} join (7 s)"
    assert drawn[-1] == f"{FRAMES[2]} join: waiting for node k8s-worker02 to be Ready (12 s)"
    assert "\n" not in stream.getvalue()   # redrawn in place, never a new line while it runs
    progress.done()
    assert stream.getvalue().endswith(f"{CLEAR_LINE}\033[32m✓\033[0m join (12 s)\n")


def test_a_line_printed_while_a_step_runs_goes_above_its_spinner_line():
    progress, stream, clock = tty_progress()
    progress.start("preflight")
    progress.warn("KVM is not usable: the qemu driver is used")
    text = SGR.sub("", stream.getvalue())
    assert text.endswith(f"{CLEAR_LINE}! KVM is not usable: the qemu driver is used\n{CLEAR_LINE}{FRAMES[0]} preflight (0 s)")


def test_a_long_sub_action_is_cut_to_the_terminal_width():
    progress, stream, clock = tty_progress()
    progress.start("cni")
    progress.action("x" * 300)
    assert all(len(line) <= 80 for line in frames(stream.getvalue()))


@pytest.mark.parametrize("value, coloured", [(None, True), ("", True), ("1", False), ("0", False)])
def test_no_color_set_to_anything_but_empty_means_no_colour(value, coloured):
    env = {"TERM": "xterm"} if value is None else {"TERM": "xterm", "NO_COLOR": value}
    progress, stream, clock = tty_progress(env)
    progress.start("render")
    progress.done()
    progress.fail("network: it broke")
    assert bool(SGR.search(stream.getvalue())) is coloured
    assert CLEAR_LINE in stream.getvalue()   # still a terminal: the line is redrawn in place


def test_a_dumb_terminal_and_a_pipe_get_one_line_per_event_and_no_escape_codes():
    for stream in (FakeTTY(), io.StringIO()):
        clock = Clock()
        progress = Progress(stream, env={"TERM": "dumb"}, clock=clock, animate=False)
        progress.start("join")
        progress.action("kubeadm join on k8s-worker01, k8s-worker02")
        progress.action("kubeadm join on k8s-worker01, k8s-worker02")   # the same: not repeated
        progress.action("kubeadm join on k8s-worker02")
        clock.now += 3
        progress.tick()
        progress.done()
        progress.skip("kubeconfig: already done")
        assert stream.getvalue().splitlines() == [
            "→ join", "  join: kubeadm join on k8s-worker01, k8s-worker02", "  join: kubeadm join on k8s-worker02",
            "✓ join (3 s)", "• kubeconfig: already done"]
        assert "\033" not in stream.getvalue()


def test_quiet_prints_failures_only():
    progress, stream, clock = tty_progress(quiet=True)
    progress.start("machines")
    progress.action("vagrant up")
    progress.warn("a warning")
    progress.done()
    progress.skip("prepare: already done")
    progress.plan("would run")
    progress.start("runtime")
    progress.fail("runtime: it broke (log: x.log)")
    assert SGR.sub("", stream.getvalue()) == "✗ runtime: it broke (log: x.log)\n"


def test_verbose_streams_the_log_lines_of_the_step(tmp_path):
    log = tmp_path / "up.log"
    log.write_text("=== earlier run ===\n")
    stream = io.StringIO()
    progress = Progress(stream, verbose=True, env={}, clock=Clock(), animate=False)
    progress.follow(log)
    progress.start("machines")
    with open(log, "a") as handle:
        handle.write("Bringing machine 'k8s-master01' up with 'libvirt' provider...\nhalf a li")
    progress.tick()
    with open(log, "a") as handle:
        handle.write("ne\n[k8s-master01] $ kubeadm token create abcdef.0123456789abcdef\n")
    progress.done()
    assert stream.getvalue().splitlines() == [
        "→ machines", "    Bringing machine 'k8s-master01' up with 'libvirt' provider...", "    half a line",
        "    [k8s-master01] $ kubeadm token create <redacted token>", "✓ machines (0 s)"]


def test_without_verbose_the_log_is_not_shown(tmp_path):
    log = tmp_path / "up.log"
    stream = io.StringIO()
    progress = Progress(stream, env={}, clock=Clock(), animate=False)
    progress.follow(log)
    progress.start("machines")
    log.write_text("vagrant said something\n")
    progress.tick()
    progress.done()
    assert "vagrant said" not in stream.getvalue()


def test_the_loop_spins_on_its_own_and_stops_when_closed():
    stream = FakeTTY()
    with Progress(stream, env={"TERM": "xterm"}) as progress:
        progress.start("machines")
        time.sleep(0.45)
        progress.done()
    drawn = frames(stream.getvalue())
    assert len({line.split()[0] for line in drawn}) >= 3     # the spinner turned
    size = len(stream.getvalue())
    time.sleep(0.25)
    assert len(stream.getvalue()) == size                    # and stopped


def test_a_step_block_ends_with_its_line():
    stream = io.StringIO()
    progress = Progress(stream, env={}, clock=Clock(), animate=False)
    with progress.step("pod-ips"):
        pass
    with pytest.raises(ValueError):
        with progress.step("pod-to-pod"):
            raise ValueError("no route")
    assert stream.getvalue().splitlines() == ["→ pod-ips", "✓ pod-ips (0 s)", "→ pod-to-pod", "✗ pod-to-pod: no route"]


# ------------------------------------------------------------------ the steps say what they wait for


class Nodes:
    def __init__(self):
        self.registered = False

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        words = list(command)[3:]
        if words[:2] == ["get", "node"]:
            ok, self.registered = self.registered, True
            return Result(0 if ok else 1, "", "" if ok else "NotFound")
        return Result(0, "")


def context(tmp_path, runner, stream):
    cfg = config.load({"state_dir": str(tmp_path / "state"), "ready_timeout": 60})
    return Context(cfg, State(tmp_path / "state.json"), runner, progress=Progress(stream, env={}, animate=False),
                   step="join")


def test_waits_name_the_node_and_what_they_wait_for(tmp_path):
    stream = io.StringIO()
    ctx = context(tmp_path, Nodes(), stream)
    ctx.progress.start("join")
    waits.wait_node_ready(ctx, "k8s-worker02", 60.0, clock=lambda: 0.0, sleep=lambda s: None)
    waits.wait_rollout(ctx, "kube-system", "daemonset/calico-node", 60)
    assert stream.getvalue().splitlines()[1:] == [
        "  join: waiting for node k8s-worker02 to register", "  join: waiting for node k8s-worker02 to be Ready",
        "  join: waiting for kube-system/daemonset/calico-node to roll out"]


def test_parallel_work_on_the_nodes_shows_the_nodes_still_at_it(tmp_path):
    stream = io.StringIO()
    ctx = context(tmp_path, Nodes(), stream)
    ctx.progress.start("prepare")
    # They finish in this order: worker01, then master01, then worker02 (each once the line before it shows).
    shown_before = {"k8s-worker01": 1, "k8s-master01": 2, "k8s-worker02": 3}

    def action(node):
        deadline = time.monotonic() + 10
        while len(stream.getvalue().splitlines()) - 1 < shown_before[node.name] and time.monotonic() < deadline:
            time.sleep(0.01)
    cluster.on_nodes(ctx.cfg.nodes, action, ctx, "prepare.sh")
    assert stream.getvalue().splitlines()[1:] == [
        "  prepare: prepare.sh on k8s-master01, k8s-worker01, k8s-worker02",
        "  prepare: prepare.sh on k8s-master01, k8s-worker02",
        "  prepare: prepare.sh on k8s-worker02"]


def test_a_failed_wait_is_the_steps_failure(tmp_path):
    class Slow(Nodes):
        def run(self, node, command, **kw):
            if "rollout" in list(command):
                return Result(1, "", "error: timed out waiting for the condition")
            return Result(0, '{"items": []}')
    ctx = context(tmp_path, Slow(), io.StringIO())
    ctx.step = "metallb"
    with pytest.raises(StepError) as err:
        waits.wait_rollout(ctx, "metallb-system", "deployment/controller", 42)
    assert err.value.step == "metallb"
    assert "metallb-system/deployment/controller is not ready after 42 s" in err.value.reason
