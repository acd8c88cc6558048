"""Shared pytest fixtures of dslab's tests: the real-VM harness.

Session fixtures (all lazy: only tests that ask for them pay for them):

``netns``
    :class:`harness.netns.NetNS`: a private network namespace ``dslabtest-*``
    (own ``lo`` up, no route out), deleted at the end with whatever runs in it.
``libvirtd``
    :class:`harness.libvirtd.Libvirtd`: virtlogd + libvirtd running inside
    ``netns``; attributes ``.ns``, ``.uri`` ("qemu:///system"), ``.pool``
    ("default", a dir pool under a temp dir unless one existed), ``.run(cmd)``
    (in the namespace), ``.virsh(*args)``, ``.domains()``, ``.networks()``.
    Fails (not skips) if a libvirtd not started by the session is running.
``test_box``
    :class:`harness.box.TestBox`: the Debian 12 box built by
    ``harness/build-box.sh`` (cached in ``$DSLAB_BOX_CACHE``) and added as
    ``dslab-test/debian12`` to a private VAGRANT_HOME; ``.name``, ``.version``,
    ``.path``, ``.vagrant_home``, ``.env``.
``vm_env``
    :class:`harness.vmenv.VMEnv` from the three above: ``.env`` (VAGRANT_HOME,
    VAGRANT_DEFAULT_PROVIDER=libvirt, LIBVIRT_DEFAULT_URI, PATH, DSLAB_BOX,
    DSLAB_NETNS, ...), ``.run_in_ns(cmd, cwd=, log=, timeout=, env=)``,
    ``.vagrant(*args, cwd=)``, ``.box_name``, ``.ns``, ``.uri``, ``.pool``.

A fixture skips only when a tool it needs is absent (the reason names it);
anything else that keeps it from working is an error.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import box as _box  # noqa: E402
from harness import libvirtd as _libvirtd  # noqa: E402
from harness.netns import NetNS, remove_stale_namespaces  # noqa: E402
from harness.vmenv import make_vm_env  # noqa: E402

# Fixtures that start the one machine-wide libvirtd for the whole session.
_SESSION_LIBVIRTD_FIXTURES = {"libvirtd", "vm_env"}


def require_tools(*tools: str) -> None:
    """Skip the calling test/fixture if any of ``tools`` is not on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"required tool(s) not installed: {', '.join(missing)}")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (ip netns, libvirtd, loop devices); "
                    "run the VM tests as root")


def pytest_collection_modifyitems(config, items):
    """Run tests that start their own libvirtd before any test that uses the
    session's one: there can be only one libvirtd on the machine at a time."""
    def uses_session_daemon(item):
        return bool(_SESSION_LIBVIRTD_FIXTURES & set(getattr(item, "fixturenames", ())))

    own = [i for i in items
           if i.get_closest_marker("libvirtd") and not uses_session_daemon(i)]
    if own:
        rest = [i for i in items if i not in own]
        items[:] = own + rest


@pytest.fixture(scope="session")
def netns():
    require_tools("ip")
    require_root("the netns fixture")
    remove_stale_namespaces()
    ns = NetNS.create()
    try:
        yield ns
    finally:
        ns.delete()


@pytest.fixture(scope="session")
def libvirtd(netns, tmp_path_factory):
    require_tools("libvirtd", "virtlogd", "virsh")
    daemon = _libvirtd.Libvirtd(netns, tmp_path_factory.mktemp("libvirtd"))
    try:
        daemon.start()
    except _libvirtd.LibvirtdBusy as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def test_box():
    require_tools("debootstrap", "qemu-img", "vagrant", "losetup", "partx", "mkfs.ext4")
    require_root("the test_box fixture")
    return _box.ensure_test_box()


@pytest.fixture(scope="session")
def vm_env(libvirtd, test_box):
    return make_vm_env(libvirtd.ns, test_box.env, test_box.name, uri=libvirtd.uri,
                       pool=libvirtd.pool)
