"""The Debian 12 Vagrant box (libvirt provider) used by dslab's VM tests.

:func:`ensure_box_file` builds it with ``build-box.sh`` (debootstrap) into a
cache directory, ``$DSLAB_BOX_CACHE`` (default ``~/.cache/dslab-test-box``),
keyed by the SHA-256 of the build script: it is rebuilt only when the script
changes.  :func:`ensure_test_box` also adds it, as ``dslab-test/debian12``, to
a Vagrant home of the tests' own (``<cache>/vagrant.d``), so the user's
``~/.vagrant.d`` is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

BOX_NAME = "dslab-test/debian12"
BUILD_SCRIPT = Path(__file__).with_name("build-box.sh")
BOX_PREFIX = "dslab-debian12-"


def cache_dir() -> Path:
    return Path(os.environ.get("DSLAB_BOX_CACHE")
                or Path.home() / ".cache" / "dslab-test-box").expanduser()


def vagrant_home(cache: Optional[Path] = None) -> Path:
    return (cache or cache_dir()) / "vagrant.d"


def script_hash() -> str:
    return hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:16]


def box_file(cache: Optional[Path] = None) -> Path:
    return (cache or cache_dir()) / f"{BOX_PREFIX}{script_hash()}.box"


def box_version(digest: Optional[str] = None) -> str:
    """A version derived from the script hash.

    vagrant-libvirt names the box volume in the storage pool after the box's
    name *and version* and reuses a volume of that name if present: a new
    version per build keeps a rebuilt box from being shadowed by an old volume.
    """
    return f"0.0.{int((digest or script_hash())[:8], 16)}"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_box_file(cache: Optional[Path] = None, force: bool = False) -> Path:
    """Build the box unless the cache has it for this build script."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = box_file(cache)
    with _locked(cache / ".build.lock"):
        if target.exists() and not force:
            return target
        log = cache / f"build-{script_hash()}.log"
        started = time.monotonic()
        with open(log, "w") as fh:
            res = subprocess.run(["bash", str(BUILD_SCRIPT), str(target)],
                                 stdout=fh, stderr=subprocess.STDOUT)
        if res.returncode != 0 or not target.exists():
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-40:])
            raise RuntimeError(f"building the test box failed ({res.returncode}); "
                               f"log: {log}\n{tail}")
        (cache / f"build-{script_hash()}.seconds").write_text(
            f"{time.monotonic() - started:.0f}\n")
        # Older builds (other script hashes) are of no further use.
        for old in [*cache.glob(f"{BOX_PREFIX}*.box"), *cache.glob("build-*.log"),
                    *cache.glob("build-*.seconds")]:
            if script_hash() not in old.name:
                old.unlink(missing_ok=True)
    return target


def base_env(home: Path) -> dict:
    """Environment for running vagrant against the tests' own Vagrant home."""
    env = dict(os.environ)
    path = env.get("PATH", "")
    for extra in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                  "/sbin", "/bin"):
        if extra not in path.split(os.pathsep):
            path = path + os.pathsep + extra if path else extra
    env.update({
        "PATH": path,
        "VAGRANT_HOME": str(home),
        "VAGRANT_DEFAULT_PROVIDER": "libvirt",
        "LIBVIRT_DEFAULT_URI": "qemu:///system",
        # No calls home: the tests have no internet.
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "DSLAB_BOX": BOX_NAME,
    })
    return env


def _installed_versions(env: dict) -> list:
    res = subprocess.run(["vagrant", "box", "list", "--machine-readable"], env=env,
                         capture_output=True, text=True)
    # Lines: ts,target,box-name|box-provider|box-version,value
    names, versions = [], []
    for line in res.stdout.splitlines():
        parts = line.split(",", 3)
        if len(parts) < 4:
            continue
        if parts[2] == "box-name":
            names.append(parts[3])
        elif parts[2] == "box-version":
            versions.append(parts[3])
    return [v for n, v in zip(names, versions) if n == BOX_NAME]


def add_box(box: Path, home: Path, env: Optional[dict] = None) -> str:
    """Install ``box`` as BOX_NAME (one version only) into the Vagrant home."""
    env = env or base_env(home)
    home.mkdir(parents=True, exist_ok=True)
    digest = box.stem[len(BOX_PREFIX):] if box.stem.startswith(BOX_PREFIX) else script_hash()
    version = box_version(digest)
    with _locked(home / ".dslab-box.lock"):
        installed = _installed_versions(env)
        if installed == [version]:
            return version
        if installed:
            subprocess.run(["vagrant", "box", "remove", "--force", "--all", BOX_NAME],
                           env=env, check=True, capture_output=True, text=True)
        catalog = home / "dslab-test-box.json"
        catalog.write_text(json.dumps({
            "name": BOX_NAME,
            "versions": [{"version": version, "providers": [
                {"name": "libvirt", "url": box.resolve().as_uri()}]}],
        }))
        res = subprocess.run(["vagrant", "box", "add", "--force", "--name", BOX_NAME,
                              "--provider", "libvirt", str(catalog)],
                             env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"vagrant box add failed ({res.returncode}):\n"
                               f"{res.stdout}{res.stderr}")
    return version


@dataclass
class TestBox:
    """The test box, installed in the tests' own Vagrant home."""

    __test__ = False  # not a pytest test class

    name: str
    version: str
    path: Path
    vagrant_home: Path
    env: dict = field(repr=False)


def ensure_test_box(cache: Optional[Path] = None) -> TestBox:
    cache = cache or cache_dir()
    path = ensure_box_file(cache)
    home = vagrant_home(cache)
    env = base_env(home)
    version = add_box(path, home, env)
    return TestBox(name=BOX_NAME, version=version, path=path, vagrant_home=home, env=env)
