"""The ``lab.up`` pipeline: status lines, --until, failures that point at the log, resuming."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import config, pipeline
from lab.errors import StepError

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self, fail_at=None):
        self.ran = []
        self.fail_at = fail_at

    def step(self, name, remembered=True):
        def run(up_run):
            self.ran.append(name)
            if name == self.fail_at:
                raise StepError(name, "it broke")
        return pipeline.Step(name, f"the {name} step", run, remembered)


@pytest.fixture()
def fake_steps(monkeypatch, tmp_path):
    recorder = Recorder()
    steps = [recorder.step("preflight", remembered=False), recorder.step("machines", remembered=False),
             recorder.step("prepare"), recorder.step("runtime"), recorder.step("kubernetes")]
    monkeypatch.setattr(pipeline, "STEPS", steps)
    monkeypatch.setattr(pipeline, "STEP_NAMES", [s.name for s in steps])
    monkeypatch.setattr(pipeline, "_alive", lambda run: True)
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    return recorder, cfg


def run_up(cfg, until=None):
    out = io.StringIO()
    try:
        pipeline.up(cfg, until=until, status=pipeline.Status(out))
    finally:
        lines = out.getvalue().splitlines()
    return lines


def test_one_status_line_per_step_and_a_second_run_skips_what_is_done(fake_steps):
    recorder, cfg = fake_steps
    lines = run_up(cfg)
    assert [line.split()[1] for line in lines] == ["preflight", "machines", "prepare", "runtime", "kubernetes"]
    assert all(line.startswith("✓ ") for line in lines)
    recorder.ran.clear()
    lines = run_up(cfg)
    assert recorder.ran == ["preflight", "machines"]
    assert lines[2:] == ["• prepare: already done", "• runtime: already done", "• kubernetes: already done"]


def test_until_stops_after_the_named_step(fake_steps):
    recorder, cfg = fake_steps
    run_up(cfg, until="prepare")
    assert recorder.ran == ["preflight", "machines", "prepare"]


def test_failure_names_step_reason_and_log_and_the_next_run_resumes(fake_steps):
    recorder, cfg = fake_steps
    recorder.fail_at = "runtime"
    with pytest.raises(StepError) as info:
        run_up(cfg)
    assert info.value.step == "runtime" and info.value.log is not None
    assert Path(info.value.log).parent == cfg.state_dir / "logs"
    recorder.fail_at = None
    recorder.ran.clear()
    lines = run_up(cfg)
    assert recorder.ran == ["preflight", "machines", "runtime", "kubernetes"]
    assert "• prepare: already done" in lines


def test_changed_inputs_rerun_remembered_steps(fake_steps):
    recorder, cfg = fake_steps
    run_up(cfg)
    (cfg.state_dir / "nodes").mkdir(exist_ok=True)
    (cfg.state_dir / "nodes" / "k8s-master01.env").write_text("CHANGED=1\n")
    recorder.ran.clear()
    run_up(cfg)
    assert recorder.ran == ["preflight", "machines", "prepare", "runtime", "kubernetes"]


def test_new_machines_forget_later_steps(tmp_path):
    state = pipeline.State(tmp_path / "state.json")
    state.set("steps", {"prepare": "x", "runtime": "y"})
    pipeline.forget_after(state, "prepare")
    assert state.get("steps") == {}


def invoke(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_up_help_lists_every_step():
    result = invoke("lab.up", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for name in pipeline.STEP_NAMES:
        assert name in text


def test_unknown_until_is_one_line_and_creates_nothing(tmp_path):
    state = tmp_path / "state"
    result = invoke("lab.up", "--until", "everything", env_extra={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode == 2  # a usage error
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lab.up --until: 'everything' is not a step; use one of preflight")
    assert not state.exists()


def test_verify_without_machines_is_one_line_and_creates_nothing(tmp_path):
    state = tmp_path / "state"
    result = invoke("lab.verify", "--layer", "network", env_extra={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"no lab machines known in {state}; run `invoke lab.up --until machines` first"]
    assert not state.exists()


def test_verify_unknown_check_is_one_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "ssh_config").write_text("Host k8s-master01\n")
    result = invoke("lab.verify", "--only", "pod-ipz", env_extra={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pod-ipz" in lines[0] and "pod-ips" in lines[0]


def test_task_list_is_quiet_and_complete():
    result = invoke("--list")
    assert result.returncode == 0 and result.stderr == ""
    for name in ("lab.up", "lab.verify", "lab.destroy", "lab.render", "lab.status", "lab.kubeconfig", "lab.config"):
        assert name in result.stdout
