"""Between the host's cache and the nodes: files copied to the nodes, images exported from and
loaded into them, kept packages collected and put back.

Large files travel as streams over the lab's ssh connections (``cat`` on one side, a file on
the other), never through memory whole; every transfer is checked by its sha256 and size.
A :class:`Transfer` runs the node's side of a stream; :class:`SshTransfer` does it with the
ssh config and control sockets of a :class:`~lab.remote.SshRunner`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, Optional, Sequence

from . import images as node_images
from .cache import CHUNK, PROGRESS_EVERY_S, Cache, Progress, Report, SourceError, download_name, mib
from .cache_entries import PACKAGE_PATH
from .errors import StepError
from .profiles import Download

#: Where the nodes keep pinned downloads (fetch.sh's DEST directory for archives).
REMOTE_DOWNLOADS = "/var/cache/dslab"
REMOTE_PACKAGES = "/var/cache/dslab/packages"
PROVISION = "/opt/dslab/provision"
ENV_FILE = "/opt/dslab/node.env"
TRANSFER_TIMEOUT_S = 3600
#: Where each OS family's package manager keeps what it downloads (cache-packages.sh, package_base).
PACKAGE_BASES = {"el7": "/var/cache/yum/x86_64/7", "el9": "/var/cache/dnf", "debian": "/var/cache/apt/archives"}


def ssh_argv(runner, node: str, line: str) -> List[str]:
    """The ssh command line of :meth:`lab.remote.SshRunner.run` for the shell ``line`` as root on ``node``."""
    from .remote import CONTROL_PERSIST_S, SSH_OPTIONS  # noqa: PLC0415 - remote is above this layer's imports

    return ["ssh", "-F", str(runner.ssh_config), *SSH_OPTIONS, "-o", "ControlMaster=auto",
            "-o", f"ControlPath={runner.control_path()}", "-o", f"ControlPersist={CONTROL_PERSIST_S}",
            node, "sudo", "bash", "-c", shlex.quote(line)]


class Transfer:
    """Streams files to and from nodes through ``argv_for(node, shell_line)``, a command that runs
    ``shell_line`` as root on the node with its stdin and stdout connected."""

    def __init__(self, argv_for: Callable[[str, str], Sequence[str]], step: str = "cache",
                 clock: Callable[[], float] = time.monotonic):
        self.argv_for, self.step, self.clock = argv_for, step, clock

    def _fail(self, node: str, what: str, proc: subprocess.Popen, stderr: bytes) -> StepError:
        said = stderr.decode(errors="replace").strip().splitlines()
        return StepError(self.step, f"{node}: {what} failed (exit {proc.returncode}): {said[-1] if said else 'no output'}")

    def send(self, node: str, local: Path, remote: str, progress: Optional[Progress] = None) -> None:
        """Copy ``local`` to ``remote`` on ``node``: written beside it, checked by size, renamed into place."""
        size, quote = local.stat().st_size, shlex.quote
        line = (f"set -euo pipefail; umask 022; mkdir -p -- {quote(str(Path(remote).parent))}; "
                f"tmp=$(mktemp {quote(remote + '.part.XXXXXX')}); trap 'rm -f \"$tmp\"' EXIT; cat > \"$tmp\"; "
                f"[[ $(wc -c < \"$tmp\") -eq {size} ]] || {{ echo 'short copy' >&2; exit 1; }}; "
                f"mv -f \"$tmp\" {quote(remote)}; trap - EXIT")
        proc = subprocess.Popen(self.argv_for(node, line), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        errors: List[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        reader.start()
        done, started = 0, self.clock()
        last = started
        try:
            with open(local, "rb") as handle:
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    proc.stdin.write(chunk)
                    done += len(chunk)
                    now = self.clock()
                    if progress is not None and (now - last >= PROGRESS_EVERY_S or done == size):
                        progress(local.name, done, size, done / max(now - started, 1e-9))
                        last = now
            proc.stdin.close()
        except BrokenPipeError:
            pass
        proc.wait(timeout=TRANSFER_TIMEOUT_S)
        reader.join()
        if proc.returncode != 0:
            raise self._fail(node, f"copying {local.name} to {remote}", proc, b"".join(errors))

    @contextlib.contextmanager
    def receive(self, node: str, remote: str) -> Iterator[BinaryIO]:
        """The bytes of ``remote`` on ``node`` as a stream; a failed ``cat`` raises on leaving the block."""
        proc = subprocess.Popen(self.argv_for(node, f"cat -- {shlex.quote(remote)}"), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        errors: List[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        reader.start()
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            proc.wait(timeout=TRANSFER_TIMEOUT_S)
            reader.join()
        if proc.returncode != 0:
            raise self._fail(node, f"reading {remote}", proc, b"".join(errors))


class SshTransfer(Transfer):
    """A :class:`Transfer` over the ssh connections of ``runner`` (a :class:`~lab.remote.SshRunner`)."""

    def __init__(self, runner, step: str = "cache"):
        super().__init__(lambda node, line: ssh_argv(runner, node, line), step)


def script(name: str, *args: str) -> List[str]:
    """The command that runs the node script ``name`` with the node's env file."""
    return ["bash", f"{PROVISION}/{name}", ENV_FILE, *args]


def remote_download(download: Download) -> str:
    """Where a pinned file goes on the nodes: fetch.sh finds it there, checks its sum, and fetches nothing."""
    return f"{REMOTE_DOWNLOADS}/{download_name(download)}"


def push_download(runner, transfer: Transfer, node: str, cache: Cache, download: Download, dest: str,
                  report: Report, progress: Optional[Progress] = None) -> bool:
    """Put the host's cached copy of ``download`` at ``dest`` on ``node`` unless one with the pinned sum is
    there; True when it was copied."""
    algo = "sha256sum" if download.sha256 else "sha512sum"
    have = runner.run(node, f"{algo} -- {shlex.quote(dest)} 2>/dev/null | cut -d' ' -f1", check=False).stdout.strip()
    if have == download.checksum.lower():
        return False
    path = cache.ensure(download, progress=progress, report=report)
    transfer.send(node, path, dest, progress)
    report(f"{node}: {download_name(download)} copied from the host's cache ({mib(path.stat().st_size)})")
    return True


def node_image_list(runner, node: str, runtime: str) -> List[node_images.NodeImage]:
    """The images on ``node`` with the digests its runtime reports."""
    out = runner.run(node, script("cache-images.sh", "list")).stdout
    try:
        return node_images.parse_list(runtime, out)
    except ValueError as exc:
        raise StepError("cache", f"{node}: {exc}") from None


def export_images(runner, transfer: Transfer, node: str, cache: Cache, profile: str, runtime: str,
                  report: Report, progress: Optional[Progress] = None,
                  on_node: Optional[List[node_images.NodeImage]] = None) -> List[str]:
    """Copy into the cache every image of ``node`` it lacks (``on_node``: its images, listed already);
    return the node's references."""
    on_node = node_image_list(runner, node, runtime) if on_node is None else on_node
    for image in on_node:  # kept already, for another profile: this one's too
        cache.share_image(image.ref, image.digest, runtime, profile)
    for image in node_images.to_export(on_node, cache, runtime):
        spool = f"{node_images.REMOTE_SPOOL}/export-{hashlib.sha256(repr(image).encode()).hexdigest()[:16]}.tar"
        try:
            out = runner.run(node, script("cache-images.sh", "export", image.ref, spool)).stdout.split()
            if len(out) < 2 or not out[-1].isdigit():
                raise StepError("cache", f"{node}: exporting {image.ref} reported no sum and size")
            sha256, size = out[-2], int(out[-1])
            with transfer.receive(node, spool) as stream:
                cache.add_image(image.ref, image.digest, stream, producer=runtime, profile=profile,
                                sha256=sha256, size=size, progress=progress)
        except SourceError as exc:
            raise StepError("cache", f"{node}: {exc}") from None
        finally:
            runner.run(node, ["rm", "-f", spool], check=False)
        report(f"{node}: {image.ref} exported to the host's cache ({mib(size)})")
    return [image.ref for image in on_node]


def load_images(runner, transfer: Transfer, node: str, cache: Cache, profile: str, runtime: str,
                report: Report, progress: Optional[Progress] = None, refs: Optional[Sequence[str]] = None) -> int:
    """Load on ``node`` every cached image of ``profile`` (only ``refs``, when given) it lacks; return how many."""
    wanted = node_images.to_load(cache, profile, runtime, node_image_list(runner, node, runtime), refs)
    for entry in wanted:
        dest = node_images.remote_path(entry)
        transfer.send(node, cache.image_path(entry), dest, progress)
        runner.run(node, script("cache-images.sh", "load", dest, entry.ref))
        report(f"{node}: {entry.ref} loaded from the host's cache ({mib(entry.size)})")
    return len(wanted)


def kept_packages(runner, node: str) -> List[List[str]]:
    """(os id, path below the package manager's cache, size) of every package ``node`` kept."""
    rows = [line.split() for line in runner.run(node, script("cache-packages.sh", "list")).stdout.splitlines()]
    return [r for r in rows if len(r) == 3 and r[0] in PACKAGE_BASES and PACKAGE_PATH.fullmatch(r[1])
            and ".." not in r[1].split("/") and r[2].isdigit()]


def collect_packages(runner, transfer: Transfer, node: str, cache: Cache, profile: str, report: Report,
                     rows: Optional[List[List[str]]] = None) -> int:
    """Copy the packages ``node`` kept into the cache (``rows``: :func:`kept_packages`, listed already)
    and record them as ``profile``'s collection."""
    rows = kept_packages(runner, node) if rows is None else rows
    added = 0
    for os_id, rel, size in rows:
        if not cache.package_path(os_id, rel).is_file():
            with transfer.receive(node, f"{PACKAGE_BASES[os_id]}/{rel}") as stream:
                cache.add_package(os_id, rel, stream, size=int(size))
            added += 1
    if rows:
        cache.set_collection(rows[0][0], profile, [r[1] for r in rows])
    report(f"{node}: {len(rows)} kept packages in the host's cache ({added} new)")
    return added


def restore_packages(runner, transfer: Transfer, node: str, cache: Cache, profile: str, report: Report) -> int:
    """Put the cached packages of ``profile`` for ``node``'s OS where its package manager finds them."""
    os_id = runner.run(node, script("cache-packages.sh", "os")).stdout.strip()
    rels = cache.packages(profile).get(os_id, []) if os_id in PACKAGE_BASES else []
    if rels:  # what the node keeps already (a baked box, a second run) is not sent again
        there = {(row[1], int(row[2])) for row in kept_packages(runner, node) if row[0] == os_id}
        rels = [(rel, size) for rel, size in rels if (rel, size) not in there]
    for rel, _ in rels:
        transfer.send(node, cache.package_path(os_id, rel), f"{REMOTE_PACKAGES}/{rel}")
    if rels:
        runner.run(node, script("cache-packages.sh", "restore", REMOTE_PACKAGES))
        report(f"{node}: {len(rels)} packages put back from the host's cache")
    return len(rels)
