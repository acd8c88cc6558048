"""fetch.sh with mirrors and load-images.sh, run for real with bash against stub commands."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

PROVISION = Path(__file__).resolve().parent.parent / "provision"

#: A `docker` that loads `docker save` tarballs by their manifest.json and answers `image inspect`.
DOCKER = r"""#!/usr/bin/env python3
import json, os, sys, tarfile, io
state = os.path.join(os.environ["STUB_DIR"], "images.json")
images = json.load(open(state)) if os.path.exists(state) else []
open(os.path.join(os.environ["STUB_DIR"], "calls.log"), "a").write(json.dumps(sys.argv[1:]) + "\n")
if sys.argv[1:2] == ["load"]:
    data = sys.stdin.buffer.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tags = json.load(tar.extractfile("manifest.json"))[0]["RepoTags"]
    for tag in tags:
        print(f"Loaded image: {tag}")
        images.append(tag)
    json.dump(images, open(state, "w"))
elif sys.argv[1:3] == ["image", "inspect"]:
    sys.exit(0 if sys.argv[3] in images else 1)
"""
#: A `curl` serving files from a map URL -> path (absent: exit 22, as curl -f on a 404).
CURL = r"""#!/usr/bin/env python3
import json, os, shutil, sys
serve = json.load(open(os.path.join(os.environ["STUB_DIR"], "serve.json")))
open(os.path.join(os.environ["STUB_DIR"], "calls.log"), "a").write(json.dumps(["curl", *sys.argv[1:]]) + "\n")
url = next(a for a in sys.argv[1:] if a.startswith("http"))
if url not in serve:
    sys.exit(22)
shutil.copy(serve[url], sys.argv[sys.argv.index("-o") + 1])
"""


@pytest.fixture
def node(tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    for name, text in (("docker", DOCKER), ("curl", CURL)):
        (stub / name).write_text(text)
        (stub / name).chmod(0o755)
    (stub / "serve.json").write_text("{}")
    root = tmp_path / "root"
    root.mkdir()
    env = {"PATH": f"{stub}:{os.environ['PATH']}", "DSLAB_ROOT": str(root), "STUB_DIR": str(stub), "LC_ALL": "C"}

    def run(script, *args, check=True):
        proc = subprocess.run(["bash", str(PROVISION / script), *args], env=env, capture_output=True, text=True,
                              timeout=60)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def calls():
        log = stub / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def serve(mapping):
        (stub / "serve.json").write_text(json.dumps(mapping))

    return {"root": root, "run": run, "calls": calls, "serve": serve, "tmp": tmp_path}


def _saved_image(tags):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = json.dumps([{"Config": "x.json", "RepoTags": tags, "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _release(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_tries_mirrors_until_the_pinned_sum_matches(node):
    good = node["tmp"] / "good"
    good.write_bytes(b"the pinned bytes\n")
    bad = node["tmp"] / "bad"
    bad.write_bytes(b"something else\n")
    want = hashlib.sha256(good.read_bytes()).hexdigest()
    node["serve"]({"https://mirror-b.example/f": str(bad), "https://mirror-c.example/f": str(good)})
    node["run"]("fetch.sh", "https://gone.example/f", want, "/var/cache/dslab/f",
                "https://mirror-b.example/f", "https://mirror-c.example/f")
    assert (node["root"] / "var/cache/dslab/f").read_bytes() == b"the pinned bytes\n"
    assert [c[-1] for c in node["calls"]()] == ["https://gone.example/f", "https://mirror-b.example/f",
                                                "https://mirror-c.example/f"]


def test_fetch_names_every_url_when_none_gives_the_file(node):
    bad = node["tmp"] / "bad"
    bad.write_bytes(b"something else\n")
    node["serve"]({"https://mirror-b.example/f": str(bad)})
    proc = node["run"]("fetch.sh", "https://gone.example/f", "0" * 64, "/var/cache/dslab/f",
                       "https://mirror-b.example/f", check=False)
    assert proc.returncode != 0
    assert "https://gone.example/f: download failed" in proc.stderr
    assert "checksum mismatch for https://mirror-b.example/f" in proc.stderr
    assert not (node["root"] / "var/cache/dslab/f").exists()
    assert list((node["root"] / "var/cache/dslab").iterdir()) == []


def test_load_images_from_a_release_archive_once(node):
    archive = node["root"] / "var/cache/dslab/release-v3.11.3.tgz"
    archive.parent.mkdir(parents=True)
    _release(archive, {
        "release-v3.11.3/images/calico-node.tar": _saved_image(["calico/node:v3.11.3"]),
        "release-v3.11.3/images/calico-cni.tar": _saved_image(["calico/cni:v3.11.3"]),
        "release-v3.11.3/k8s-manifests/calico.yaml": b"kind: List\n",
    })
    members = ["release-v3.11.3/images/calico-node.tar", "release-v3.11.3/images/calico-cni.tar"]
    node["run"]("load-images.sh", "/var/cache/dslab/release-v3.11.3.tgz", *members)
    assert [c for c in node["calls"]() if c[:1] == ["load"]] == [["load"], ["load"]]
    # second run: every image named by the first is present, nothing is loaded again
    before = len(node["calls"]())
    node["run"]("load-images.sh", "/var/cache/dslab/release-v3.11.3.tgz", *members)
    again = node["calls"]()[before:]
    assert again and all(c[:2] == ["image", "inspect"] for c in again)
    # an image removed from Docker is loaded again
    images = node["tmp"] / "stub" / "images.json"
    images.write_text(json.dumps(["calico/cni:v3.11.3"]))
    before = len(node["calls"]())
    node["run"]("load-images.sh", "/var/cache/dslab/release-v3.11.3.tgz", *members)
    assert [c for c in node["calls"]()[before:] if c[:1] == ["load"]] == [["load"]]


def test_load_images_fails_naming_a_missing_member(node):
    archive = node["root"] / "var/cache/dslab/r.tgz"
    archive.parent.mkdir(parents=True)
    _release(archive, {"r/images/calico-node.tar": _saved_image(["calico/node:v3.11.3"])})
    proc = node["run"]("load-images.sh", "/var/cache/dslab/r.tgz", "r/images/calico-typo.tar", check=False)
    assert proc.returncode != 0 and "cannot load r/images/calico-typo.tar" in proc.stderr


def test_scripts_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run(["shellcheck", "-x", "provision/fetch.sh", "provision/load-images.sh"],
                          cwd=PROVISION.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
