"""The host's cache in lab.up: where the steps take pinned files, packages and images from it,
the step that keeps what the nodes got, lab.offline's preflight, and the baked box a Vagrantfile boots."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from lab import cache_steps, cluster, config, nodeenv, pipeline, render, workloads
from lab.cache import Cache
from lab.context import Context, Result, State
from lab.profiles import PROFILES

ROOT = Path(__file__).resolve().parent.parent
PROVISION = ROOT / "provision"


class Recorder:
    """Nodes that answer every command with success (``answers`` by predicate first), recording
    the commands and the host's copies (pushes) in one order."""

    def __init__(self, answers=()):
        self.calls, self.answers = [], list(answers)

    def run(self, node, command, *, input=None, timeout=None, check=True, secret=False):
        argv = [command] if isinstance(command, str) else list(command)
        self.calls.append(("run", node, argv))
        for matches, result in self.answers:
            if matches(argv):
                return result
        return Result(0, "")

    def put_text(self, node, text, remote, mode="0644", secret=False):
        self.calls.append(("put", node, remote))

    def put_tree(self, node, local_dir, remote_dir):
        self.calls.append(("tree", node, remote_dir))


def context(tmp_path, runner, profile="current", **settings):
    cfg = config.load({"profile": profile, "state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "cache"),
                       **settings})
    return Context(cfg, State(tmp_path / "state.json"), runner, cache=Cache(cfg.cache_dir))


@pytest.fixture
def pushes(monkeypatch):
    """cache_steps.push recorded into the runner's calls instead of copying anything."""
    def push(ctx, node, download, dest):
        assert ctx.cache is not None
        ctx.runner.calls.append(("push", node, download.url, dest))
    monkeypatch.setattr(cache_steps, "push", push)


def fetches_follow_their_push(calls):
    """Every fetch.sh call on a node comes after the host copied that URL to that destination there."""
    pushed = set()
    fetched = 0
    for call in calls:
        if call[0] == "push":
            pushed.add(call[1:])
        elif call[0] == "run" and call[2][:2] == ["bash", nodeenv.FETCH]:
            _bash, _fetch, url, _sum, dest, *_mirrors = call[2]
            assert (call[1], url, dest) in pushed, f"{call[1]} fetches {url} to {dest} without the host's copy"
            fetched += 1
    return fetched


@pytest.mark.parametrize("profile", list(PROFILES))
def test_cni_takes_calico_from_the_host_cache_before_fetch_sh(tmp_path, profile, pushes):
    fixture = {"current": "calico-3.31.yaml", "seed-2020": "calico-3.11.yaml"}[profile]
    manifest = (ROOT / "tests" / "fixtures" / fixture).read_text()
    runner = Recorder([(lambda argv: argv == ["cat", cluster.REMOTE_CALICO_UPSTREAM], Result(0, manifest))])
    ctx = context(tmp_path, runner, profile)
    cluster.cni(ctx)
    expected = len(ctx.cfg.nodes) if ctx.cfg.profile.calico_images else 1
    assert fetches_follow_their_push(runner.calls) == expected


@pytest.mark.parametrize("profile", list(PROFILES))
def test_metallb_takes_its_manifests_from_the_host_cache_before_fetch_sh(tmp_path, profile, pushes, monkeypatch):
    from test_workloads import FakeRunner, with_pins  # noqa: PLC0415 - its kubectl answers

    monkeypatch.setattr(workloads, "_sleep", lambda s: None)
    base = context(tmp_path, None, profile)
    cfg = with_pins(base.cfg)
    fake = FakeRunner(cfg)
    calls = []

    class Both:
        def run(self, node, command, **options):
            calls.append(("run", node, list(command) if not isinstance(command, str) else [command]))
            return fake.run(node, command, **options)

        def put_text(self, *a, **k):
            return fake.put_text(*a, **k)

        def put_tree(self, *a, **k):
            return fake.put_tree(*a, **k)

    runner = Both()
    runner.calls = calls
    workloads.deploy_metallb(Context(cfg, State(tmp_path / "s.json"), runner, cache=base.cache))
    assert fetches_follow_their_push(calls) == len(cfg.profile.metallb_manifests)


@pytest.mark.parametrize("profile,script,variable", [("current", "cri-dockerd.sh", "CRI_DOCKERD_URL"),
                                                     ("seed-2020", "kubernetes.sh", "KUBERNETES_ARCHIVE_URL")])
def test_kubernetes_puts_its_archives_where_the_scripts_fetch_them(tmp_path, pushes, profile, script, variable):
    runner = Recorder()
    ctx = context(tmp_path, runner, profile)
    cluster.kubernetes(ctx)
    pin = ctx.cfg.profile.cri_dockerd if script == "cri-dockerd.sh" else ctx.cfg.profile.kubernetes_node_archive
    dest = f"/var/cache/dslab/{posixpath.basename(pin.url)}"
    # the script's own destination for that download, read from the script
    assert f'"/var/cache/dslab/$(basename "${variable}")"' in (PROVISION / script).read_text()
    for node in ctx.cfg.nodes:
        pushed = [i for i, c in enumerate(runner.calls) if c == ("push", node.name, pin.url, dest)]
        ran = [i for i, c in enumerate(runner.calls) if c[0] == "run" and c[1] == node.name
               and c[2][:2] == ["bash", f"{nodeenv.REMOTE_DIR}/provision/{script}"]]
        assert pushed and ran and pushed[0] < ran[0], (node.name, runner.calls)


def test_prepare_puts_the_kept_packages_back_before_prepare_sh(tmp_path, monkeypatch):
    runner = Recorder()
    monkeypatch.setattr(cache_steps, "restore_packages", lambda ctx: runner.calls.append(("restore",)))
    cluster.prepare(context(tmp_path, runner))
    first_prepare = next(i for i, c in enumerate(runner.calls) if c[0] == "run" and "prepare.sh" in c[2][1])
    assert runner.calls.index(("restore",)) < first_prepare


def test_without_a_cache_the_steps_copy_nothing(tmp_path):
    runner = Recorder()
    ctx = context(tmp_path, runner, "seed-2020")
    ctx.cache = None
    cluster.kubernetes(ctx)
    cluster.images(ctx)
    assert not [c for c in runner.calls if c[0] == "run" and any("cache-" in str(a) for a in c[2])]


def test_images_load_before_anything_pulls_and_the_cache_step_ends_the_run():
    names = pipeline.STEP_NAMES
    assert names.index("runtime") < names.index("images") < names.index("kubernetes") < names.index("control-plane")
    assert names[-1] == "cache"
    chosen = [s.name for s in pipeline._chosen(pipeline.STEPS, "runtime")]
    assert chosen == names[:names.index("runtime") + 1] + ["cache"]
    assert [s.name for s in pipeline._chosen(pipeline.STEPS, "machines")] == names[:names.index("machines") + 1]
    assert [s.name for s in pipeline._chosen(pipeline.STEPS, "cache")] == names
    assert [s.name for s in pipeline._chosen(pipeline.STEPS, None)] == names


def test_an_up_context_has_the_configured_cache(tmp_path):
    cfg = config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "c")})
    ctx = pipeline.open_context(cfg, "up")
    assert ctx.cache.root == tmp_path / "c"


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("value,expected", [("true", True), ("No", False), ("on", True), ("0", False),
                                            (True, True), (False, False)])
def test_offline_reads_yes_and_no(value, expected):
    assert config.load({"offline": value}).offline is expected


@pytest.mark.parametrize("settings,line", [
    ({"offline": "maybe"}, "lab.offline: 'maybe' is not true or false; set true or false"),
    ({"cache_dir": ""}, "lab.cache_dir: must be a non-empty path"),
    ({"cache_dir": "{state}"}, "is lab.state_dir"),
    ({"cache_dir": "{state}/.vagrant/cache"}, "or a folder of it that lab.destroy removes"),
    ({"cache_dir": "{state}/ssh"}, "or a folder of it that lab.destroy removes"),
    ({"cache_dir": "{tmp}/file/cache"}, "which is a file; give a directory path"),
])
def test_cache_settings_refused_in_one_line(tmp_path, settings, line):
    (tmp_path / "file").write_text("")
    state = tmp_path / "lab"
    raw = {k: v.format(state=state, tmp=tmp_path) if isinstance(v, str) else v for k, v in settings.items()}
    with pytest.raises(config.ConfigError) as err:
        config.load({"state_dir": str(state), **raw})
    assert len(err.value.problems) == 1 and line in err.value.problems[0], err.value.problems
    assert not state.exists()


def test_a_cache_in_a_folder_of_the_state_dir_that_destroy_keeps_is_taken(tmp_path):
    from lab import statedir  # noqa: PLC0415

    cfg = config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "lab" / "cache")})
    pipeline.open_context(cfg, "up")
    (cfg.cache_dir / "files").mkdir(parents=True)
    (cfg.cache_dir / "files" / "kept").write_text("a cached file")
    statedir.remove_state(cfg.state_dir)
    assert (cfg.cache_dir / "files" / "kept").read_text() == "a cached file"


def test_a_cache_dir_that_cannot_be_written_is_refused(tmp_path):
    """A directory the user cannot write: mode 0500, or for root (who writes any mode) a read-only filesystem."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(locked)], check=True)
    try:
        with pytest.raises(config.ConfigError) as err:
            config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(locked / "cache")})
        assert len(err.value.problems) == 1
        assert err.value.problems[0].startswith("lab.cache_dir: ") and "is not writable" in err.value.problems[0]
        assert not (locked / "cache").exists() and not (tmp_path / "lab").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=True)


def test_the_default_cache_is_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.load({}).cache_dir == tmp_path / "xdg" / "dslab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert config.load({}).cache_dir == Path.home() / ".cache" / "dslab"


# --------------------------------------------------------------------------- offline


def test_offline_with_an_empty_cache_names_what_is_missing_and_creates_nothing(tmp_path):
    cwd = tmp_path / "project"
    cwd.mkdir()
    shutil.copy(ROOT / "tasks.py", cwd / "tasks.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "SUDO_"))}
    env.update(PYTHONPATH=str(ROOT), INVOKE_LAB_STATE_DIR=str(cwd / "st"), INVOKE_LAB_CACHE_DIR=str(tmp_path / "cache"),
               INVOKE_LAB_LIBVIRT_URI="test:///default", VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    for args, extra in ((["lab.up", "--offline"], {}), (["lab.up"], {"INVOKE_LAB_OFFLINE": "true"})):
        result = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=dict(env, **extra),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines[0] == "→ preflight" and all(line.startswith("✗ lab.offline: ") for line in lines[1:]), lines
        text = result.stderr
        profile = PROFILES["current"]
        assert f"the box {profile.box} is neither in Vagrant's box store" in text
        assert "calico.yaml" in text and "metallb-native.yaml" in text and "cri-dockerd" in text
        assert f"the image {profile.nginx_image}" in text
        assert "nothing was created" in lines[-1] and "Traceback" not in text
        assert not (cwd / "st").exists() and not (tmp_path / "cache").exists() and not (tmp_path / "vagrant.d").exists()


# --------------------------------------------------------------------------- the baked box


def test_a_baked_box_in_the_cache_is_what_the_vagrantfile_boots(tmp_path):
    cache_dir = tmp_path / "a cache"  # a space: the file:// URL quotes it
    store = Cache(cache_dir)
    (tmp_path / "box").write_bytes(b"not a real box, only its bytes")
    entry = store.add_box("dslab/current-docker", tmp_path / "box", profile="current", runtime="docker")
    cfg = config.load({"box": "dslab/current-docker", "state_dir": str(tmp_path / "lab"), "cache_dir": str(cache_dir)})
    render.render_all(cfg, cfg.state_dir)
    text = (cfg.state_dir / "Vagrantfile").read_text()
    url = "file://" + urllib.parse.quote(str(store.box_path(entry)))
    assert f'config.vm.box_url = "{url}"\n' in text and "%20" in url
    assert f'config.vm.box_download_checksum = "{hashlib.sha256(b"not a real box, only its bytes").hexdigest()}"' in text
    assert "config.vm.ignore_box_vagrantfile = true\n" in text  # a bundle's box Vagrantfile never runs here
    if shutil.which("vagrant"):
        env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_DEFAULT_PROVIDER="libvirt",
                   VAGRANT_CHECKPOINT_DISABLE="1")
        result = subprocess.run(["vagrant", "validate"], cwd=cfg.state_dir, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    # A box of the user's own (a URL given) is not the cache's.
    own = dataclasses.replace(cfg, box_url="https://boxes.example/mine.box")
    assert 'config.vm.box_url = "https://boxes.example/mine.box"' in render.vagrantfile(own)
    assert "ignore_box_vagrantfile" not in render.vagrantfile(own)


def test_the_cache_streams_over_the_runs_own_ssh_connections(tmp_path):
    from lab import cache_sync  # noqa: PLC0415

    cfg = config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "c")})
    ctx = pipeline.open_context(cfg, "up")
    ctx.layout.ssh_config.write_text("Host k8s-master01\n  HostName 192.168.200.11\n")
    argv = cache_sync.SshTransfer(ctx.runner).argv_for("k8s-master01", "cat -- /x")
    assert argv[:3] == ["ssh", "-F", str(ctx.layout.ssh_config)]
    assert f"ControlPath={ctx.runner.control_path()}" in argv
    assert argv[-5:] == ["k8s-master01", "sudo", "bash", "-c", "'cat -- /x'"]


def test_a_step_says_on_its_line_what_it_took_from_the_cache(tmp_path):
    import io  # noqa: PLC0415

    from lab.progress import Progress  # noqa: PLC0415

    stream = io.StringIO()
    cfg = config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "c")})
    ctx = pipeline.open_context(cfg, "up", Progress(stream, env={}, animate=False))

    def loads(ctx):
        cache_steps._tell(ctx, "6 images loaded from the host's cache")
        cache_steps._tell(ctx, "calico.yaml to k8s-master01 from the host's cache")

    pipeline.run_step(ctx, pipeline.Step("images", "", loads))
    pipeline.run_step(ctx, pipeline.Step("render", "", lambda ctx: None))
    lines = stream.getvalue().splitlines()
    assert "✓ images: 6 images loaded from the host's cache; calico.yaml to k8s-master01 from the host's cache (0 s)" \
        in lines, lines
    assert "✓ render (0 s)" in lines, lines


def test_a_cache_that_cannot_keep_is_a_warning_and_the_lab_stays_up(tmp_path, monkeypatch):
    import io  # noqa: PLC0415

    from lab.cache import CacheError  # noqa: PLC0415
    from lab.progress import Progress  # noqa: PLC0415

    def full(ctx):
        raise CacheError("lab.cache_dir: no space left in /c while writing images/x.tar; free space there")
    monkeypatch.setattr(cache_steps, "export_images", full)
    stream = io.StringIO()
    cfg = config.load({"state_dir": str(tmp_path / "lab"), "cache_dir": str(tmp_path / "c")})
    ctx = pipeline.open_context(cfg, "up", Progress(stream, env={}, animate=False))
    keep = next(step for step in pipeline.STEPS if step.name == "cache")
    pipeline.run_step(ctx, keep)  # no StepError
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("! cache: the host's cache did not keep what this lab got (lab.cache_dir: no space")
               for line in lines), lines
    assert "✓ cache: not kept (see the warning) (0 s)" in lines


def test_offline_counts_the_cached_box_only_where_the_vagrantfile_boots_it(tmp_path):
    from lab import cache_offline  # noqa: PLC0415

    store = Cache(tmp_path / "cache")
    (tmp_path / "box").write_bytes(b"a baked box")
    store.add_box("dslab/current-docker", tmp_path / "box", profile="current", runtime="docker")
    env = {"VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    cached = config.load({"box": "dslab/current-docker", "cache_dir": str(tmp_path / "cache")})
    elsewhere = dataclasses.replace(cached, box_url="https://boxes.example/current.box")
    assert not [p for p in cache_offline.offline_problems(cached, store, env) if "the box" in p]
    assert [p for p in cache_offline.offline_problems(elsewhere, store, env) if "the box dslab/current-docker" in p]
    assert cache_offline.baked_box(cached, store) is not None and cache_offline.baked_box(elsewhere, store) is None
    assert "file://" in render.vagrantfile(cached) and "file://" not in render.vagrantfile(elsewhere)
