"""The ``lab.up`` pipeline: status lines, --until, failures that point at the log, resuming,
fingerprints of what each step uses, and ``--dry``."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cluster, config, layout, nodeenv, pipeline, render
from lab.context import Context, Result, State
from lab.errors import StepError
from lab.progress import Progress

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    def __init__(self, fail_at=None):
        self.ran = []
        self.fail_at = fail_at

    def run(self, name):
        def run(ctx):
            assert isinstance(ctx, Context) and ctx.step == name
            self.ran.append(name)
            if name == self.fail_at:
                raise StepError(name, "it broke")
        return run

    def step(self, name, remembered=True, **inputs):
        return pipeline.Step(name, f"the {name} step", self.run(name), remembered, **inputs)


@pytest.fixture()
def fake_steps(tmp_path):
    recorder = Recorder()
    steps = [recorder.step("preflight", remembered=False), recorder.step("machines", remembered=False),
             recorder.step("prepare", scripts=("lib.sh", "prepare.sh")), recorder.step("runtime",
                                                                                       scripts=("lib.sh", "runtime.sh")),
             recorder.step("kubernetes")]
    cfg = config.load({"state_dir": str(tmp_path / "state")})
    return recorder, cfg, steps


def run_up(cfg, steps, until=None):
    out = io.StringIO()
    try:
        pipeline.up(cfg, until=until, progress=Progress(out, animate=False), steps=steps, alive=lambda ctx: True)
    finally:
        lines = out.getvalue().splitlines()
    return lines


def test_a_start_line_and_an_end_line_per_step_and_a_second_run_skips_what_is_done(fake_steps):
    recorder, cfg, steps = fake_steps
    lines = run_up(cfg, steps)
    names = ["preflight", "machines", "prepare", "runtime", "kubernetes"]
    assert [line.split()[1] for line in lines] == [n for name in names for n in (name, name)]
    assert lines[0::2] == [f"→ {name}" for name in names]
    assert all(re.fullmatch(r"✓ \S+ \(\d+ s\)", line) for line in lines[1::2]), lines
    recorder.ran.clear()
    lines = run_up(cfg, steps)
    assert recorder.ran == ["preflight", "machines"]
    assert lines[4:] == ["• prepare: already done", "• runtime: already done", "• kubernetes: already done"]


def test_up_runs_the_steps_it_is_given_not_the_module_list(fake_steps):
    recorder, cfg, steps = fake_steps
    run_up(cfg, steps[:2])
    assert recorder.ran == ["preflight", "machines"]
    assert [s.name for s in pipeline.STEPS][:4] == ["preflight", "network", "render", "machines"]


def test_until_stops_after_the_named_step(fake_steps):
    recorder, cfg, steps = fake_steps
    run_up(cfg, steps, until="prepare")
    assert recorder.ran == ["preflight", "machines", "prepare"]


def test_failure_names_step_reason_and_log_and_the_next_run_resumes(fake_steps):
    recorder, cfg, steps = fake_steps
    recorder.fail_at = "runtime"
    with pytest.raises(StepError) as info:
        run_up(cfg, steps)
    assert info.value.step == "runtime" and info.value.log is not None
    assert Path(info.value.log).parent == cfg.state_dir / "logs"
    recorder.fail_at = None
    recorder.ran.clear()
    lines = run_up(cfg, steps)
    assert recorder.ran == ["preflight", "machines", "runtime", "kubernetes"]
    assert "• prepare: already done" in lines


def test_machines_that_do_not_run_rerun_the_remembered_steps(fake_steps):
    recorder, cfg, steps = fake_steps
    run_up(cfg, steps)
    recorder.ran.clear()
    pipeline.up(cfg, progress=Progress(io.StringIO(), animate=False), steps=steps, alive=lambda ctx: False)
    assert recorder.ran == ["preflight", "machines", "prepare", "runtime", "kubernetes"]


def test_a_changed_setting_a_script_reads_reruns_that_step_only(fake_steps):
    recorder, cfg, steps = fake_steps
    run_up(cfg, steps)
    recorder.ran.clear()
    changed = config.load({"state_dir": str(cfg.state_dir), "docker_ipv6_cidr": "fd00:7::/64"})
    run_up(changed, steps)
    assert recorder.ran == ["preflight", "machines", "runtime"]   # DOCKER_FIXED_CIDR_V6 is runtime.sh's


def test_new_machines_forget_every_step_done(tmp_path):
    state = State(tmp_path / "state.json")
    state.set("steps", {"prepare": "x", "runtime": "y"})
    pipeline.forget_steps(state)
    assert state.get("steps") == {}


# ------------------------------------------------------------------ what each step fingerprints


def script_variables(path: Path) -> set:
    """The node settings a script reads: every $VAR / ${VAR..., and the names `need` checks."""
    text = path.read_text()
    found = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    for line in re.findall(r"^\s*need ([A-Z0-9_ ]+)$", text, re.M):
        found.update(line.split())
    return found


def all_node_settings():
    names = set()
    for profile, runtime in (("current", "docker"), ("current", "containerd"), ("seed-2020", "docker")):
        cfg = config.load({"profile": profile, "runtime": runtime})
        for node in cfg.nodes:
            names.update(nodeenv.node_env(cfg, node))
    return names


def test_the_settings_each_script_reads_are_the_ones_its_steps_fingerprint():
    """nodeenv.READS is what the scripts really read (grep), and a step covers all of its scripts'."""
    settings = all_node_settings()
    # READS lists exactly the scripts lab.up's steps run, and lib.sh comes with every script.
    assert set(nodeenv.READS) == {s for step in pipeline.STEPS for s in step.scripts}
    assert all("lib.sh" in step.scripts for step in pipeline.STEPS if step.scripts)
    for name in nodeenv.READS:
        assert set(nodeenv.READS[name]) == script_variables(render.PROVISION_DIR / name) & settings, name
    for step in pipeline.STEPS:
        assert set(nodeenv.variables_read(step.scripts)) == {
            v for s in step.scripts for v in script_variables(render.PROVISION_DIR / s)} & settings, step.name


def test_no_node_setting_goes_unread():
    read = {v for path in render.PROVISION_DIR.glob("*.sh") for v in script_variables(path)}
    assert sorted(all_node_settings() - read) == []


class FakeNodes:
    """Answers every command as a healthy node would; records the provision scripts run."""

    def __init__(self):
        self.scripts = set()
        self.calico = ""

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        argv = [str(a) for a in command] if not isinstance(command, str) else [command]
        for word in argv:
            if word.startswith(f"{nodeenv.REMOTE_DIR}/provision/"):
                self.scripts.add(word.rsplit("/", 1)[1])
        if argv == cluster.JOIN_PENDING:
            return Result(1)
        if argv[:2] == ["cat", cluster.REMOTE_CALICO_UPSTREAM]:
            return Result(0, self.calico)
        if argv[:1] == ["kubectl"] and "json" in argv:
            return Result(0, json.dumps({"items": [], "status": {}}))
        return Result(0, "")

    def put_tree(self, node, local, remote):
        pass

    def put_text(self, node, text, remote, mode="0644", secret=False):
        pass


@pytest.mark.parametrize("profile, runtime", [("current", "docker"), ("current", "containerd"),
                                              ("seed-2020", "docker")])
@pytest.mark.parametrize("name", ["prepare", "runtime", "kubernetes", "control-plane", "cni", "join"])
def test_each_step_runs_only_the_scripts_it_fingerprints(tmp_path, monkeypatch, profile, runtime, name):
    step = next(s for s in pipeline.STEPS if s.name == name)
    cfg = config.load({"state_dir": str(tmp_path / "state"), "profile": profile, "runtime": runtime})
    nodes = FakeNodes()
    nodes.calico = (ROOT / "tests" / "fixtures" / ("calico-3.11.yaml" if profile == "seed-2020"
                                                   else "calico-3.31.yaml")).read_text()
    monkeypatch.setattr(cluster.kubeadm, "ca_cert_hash", lambda pem: "sha256:" + "a" * 64)
    ctx = Context(cfg, State(tmp_path / "state.json"), nodes, step=name)
    ctx.state.set("ca_cert_hash", "sha256:" + "a" * 64)
    try:
        step.run(ctx)
    except StepError:
        pass  # a fake answer a step cannot use; what ran until then counts
    assert nodes.scripts, name
    assert nodes.scripts <= set(step.scripts), (name, nodes.scripts)


def fingerprints(cfg, state):
    files = render.artifacts(cfg, state)
    return {s.name: pipeline.fingerprint(cfg, s, files) for s in pipeline.STEPS if s.remembered}


def test_a_changed_domain_reruns_only_what_reads_it(tmp_path):
    """lab.domain reaches no script: only the kubeadm configuration (a certSAN) has it."""
    state = State(tmp_path / "state.json")
    before = fingerprints(config.load({"state_dir": str(tmp_path / "s")}), state)
    after = fingerprints(config.load({"state_dir": str(tmp_path / "s"), "domain": "other.internal"}), state)
    assert sorted(name for name in before if before[name] != after[name]) == ["control-plane"]

    recorder = Recorder()
    steps = [dataclasses.replace(s, run=recorder.run(s.name)) for s in pipeline.STEPS if s.remembered]
    run_up(config.load({"state_dir": str(tmp_path / "lab")}), steps)
    recorder.ran.clear()
    run_up(config.load({"state_dir": str(tmp_path / "lab"), "domain": "other.internal"}), steps)
    assert recorder.ran == ["control-plane"]


# ------------------------------------------------------------------ through the real invoke


def invoke(*args, env_extra=None, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_up_help_lists_every_step_with_what_it_does():
    result = invoke("--help", "lab.up")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for step in pipeline.STEPS:
        assert f"{step.name} {step.help}" in text


def test_unknown_until_is_one_line_and_creates_nothing(tmp_path):
    state = tmp_path / "state"
    result = invoke("lab.up", "--until", "everything", env_extra={"INVOKE_LAB_STATE_DIR": str(state)})
    assert result.returncode == 2  # a usage error
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lab.up --until: 'everything' is not a step; use one of preflight")
    assert not state.exists()


def test_verbose_and_quiet_together_are_one_usage_line(tmp_path):
    for task in ("lab.up", "lab.destroy"):
        result = invoke(task, "--verbose", "--quiet", env_extra={"INVOKE_LAB_STATE_DIR": str(tmp_path / "s")})
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"{task}: --verbose and --quiet exclude each other; give one of them"]
    assert not (tmp_path / "s").exists()


def snapshot(path: Path):
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def running_lab(tmp_path, cfg):
    """A test-driver libvirt host where the lab's machines run."""
    domains = "".join(f"<domain type='test'><name>{cfg.domain_name(n)}</name><memory>1024</memory>"
                      "<os><type>hvm</type></os></domain>" for n in cfg.nodes)
    (tmp_path / "node.xml").write_text(f"<node>{domains}<pool type='dir'><name>default</name><target>"
                                       "<path>/pool</path></target></pool></node>")
    return f"test://{tmp_path / 'node.xml'}"


@pytest.mark.parametrize("flag", ["--dry", "-R"])
def test_dry_up_lists_the_steps_and_changes_nothing(tmp_path, flag):
    shutil.copy(ROOT / "tasks.py", tmp_path / "tasks.py")
    state = tmp_path / "state"
    env = {"PYTHONPATH": str(ROOT), "INVOKE_LAB_STATE_DIR": str(state), "INVOKE_LAB_LIBVIRT_URI": "test:///default"}
    fresh = invoke(flag, "lab.up", env_extra=env, cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert not state.exists()   # not even the marker
    lines = fresh.stderr.splitlines()
    for step in pipeline.STEPS:
        assert any(line.startswith(f"· {step.name}: would run") for line in lines), (step.name, lines)
    assert lines[-1].startswith("· dry run: nothing was changed")
    assert "is up" not in fresh.stderr and "✓" not in fresh.stderr

    # A lab whose steps are done, on a host where its machines run: the remembered steps would be skipped.
    cfg = config.load({"state_dir": str(state)})
    steps = [dataclasses.replace(s, run=lambda ctx: None) for s in pipeline.STEPS]
    render.render_all(cfg, state)
    run_up(cfg, steps)
    env["INVOKE_LAB_LIBVIRT_URI"] = running_lab(tmp_path, cfg)
    before = snapshot(state)
    done = invoke(flag, "lab.up", "--until", "join", env_extra=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert snapshot(state) == before
    lines = done.stderr.splitlines()
    for name in ("prepare", "runtime", "kubernetes", "control-plane", "cni", "join"):
        assert f"• {name}: already done, would be skipped" in lines, lines
    assert "· machines: would run (it runs every time)" in lines
    assert not any("metallb" in line for line in lines)   # after --until
    # A changed setting: the step that reads it would run.
    env["INVOKE_LAB_DOCKER_IPV6_CIDR"] = "fd00:7::/64"
    changed = invoke(flag, "lab.up", "--until", "join", env_extra=env, cwd=tmp_path)
    assert "· runtime: would run (its inputs changed)" in changed.stderr.splitlines(), changed.stderr
    assert snapshot(state) == before


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


def test_every_state_key_written_is_one_the_layout_lists():
    """Every key lab/ reads or writes in state.json (a literal, a constant, or a constant prefix)."""
    import ast
    import importlib

    seen = set()
    for path in sorted((ROOT / "lab").rglob("*.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get", "set", "delete") and node.args):
                continue
            owner = node.func.value
            if not (isinstance(owner, ast.Name) and owner.id == "state"
                    or isinstance(owner, ast.Attribute) and owner.attr == "state"):
                continue
            key = node.args[0]
            if isinstance(key, ast.BinOp):
                key = key.left
                value = getattr(module, key.id) if isinstance(key, ast.Name) else key.value
                seen.add(value + "x")
                continue
            value = key.value if isinstance(key, ast.Constant) else getattr(module, key.id)
            seen.add(value)
    assert {"steps", "lab_id", "bootstrap_token", "ca_cert_hash"} <= seen
    assert [key for key in sorted(seen) if not layout.state_key_known(key)] == []


def test_a_profile_field_nothing_installs_reruns_no_step(tmp_path):
    """What only validation and lab.verify read (the client image, the e2e focus) re-runs no step;
    a pin a step installs re-runs that step."""
    import dataclasses  # noqa: PLC0415

    from lab import profiles  # noqa: PLC0415

    state = State(tmp_path / "state.json")
    cfg = config.load({"state_dir": str(tmp_path / "s")})
    before = fingerprints(cfg, state)
    verify_only = dataclasses.replace(cfg.profile, client_image="registry.k8s.io/e2e-test-images/agnhost:9.99",
                                      e2e_focus="other")
    assert fingerprints(dataclasses.replace(cfg, profile=verify_only), state) == before
    pin = profiles.Download(url=cfg.profile.calico_manifest.url, sha256="0" * 64)
    repinned = dataclasses.replace(cfg.profile, calico_manifest=pin)
    after = fingerprints(dataclasses.replace(cfg, profile=repinned), state)
    assert after["cni"] != before["cni"]
