"""The host's cache of what labs download: pinned files, container images, OS packages, boxes.

It lives at ``lab.cache_dir`` (default ``$XDG_CACHE_HOME/dslab``, else ``~/.cache/dslab``),
outside every state directory, so ``lab.destroy`` keeps it and every lab of the host shares it::

    files/sha256/<hex>               a pinned download, named by its sha256
    files/sha512/<hex>               one pinned only by a sha512 (the 1.17 node tarball)
    images/<ref>@<digest>.tar        a ``docker save`` / ``ctr export`` tarball; images/index.json
    images/needed.json               per profile and runtime: the images a lab's nodes held
    packages/<os-id>/<path>          rpm/deb files the nodes' package managers kept; index.json
    boxes/<name>.box                 boxes (``lab.bake``); boxes/index.json
    tmp/                             writes in progress (same filesystem), never read

Every entry is written to ``tmp/`` first and renamed into place only once complete and
checked, so a partial download, a wrong sum or a full disk never leaves a visible entry and
never replaces the old one. Index files are replaced the same way, under a lock.
The listing per profile and pruning are in :mod:`lab.cache_prune`, which builds on this module.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import urlsplit

from .cache_entries import (IMAGE_REF, INDEX_VERSION, BoxEntry, EntriesMixin, ImageEntry, Progress,  # noqa: F401 - re-exported
                            Report, Source)
from .errors import LabError
from .profiles import Download, Profile
from .settings import default_cache_dir


CHUNK = 1 << 20
PROGRESS_EVERY_S = 0.5
DOWNLOAD_TIMEOUT_S = 60
SETTING = "lab.cache_dir"


class CacheError(LabError):
    """The cache cannot be read or written; the one line names ``lab.cache_dir`` and the fix."""


class CacheDirError(CacheError):
    """``lab.cache_dir`` is no directory the lab can write (a file, not writable): a setting to change."""


class DownloadError(LabError):
    """No URL of a pinned download gave the pinned bytes; nothing was cached."""


class SourceError(LabError):
    """Reading what was to be cached failed (a broken download, a failed transfer)."""


class _Mismatch(Exception):
    """The bytes read do not have the expected sum or size."""


def default_dir(environ=os.environ) -> Path:
    """Where the cache is when ``lab.cache_dir`` is not set (:func:`lab.settings.default_cache_dir`)."""
    return default_cache_dir(environ)


def for_config(cfg) -> "Cache":
    """The cache of a loaded configuration (``cfg.cache_dir``, the default where it has none)."""
    return Cache(getattr(cfg, "cache_dir", None) or default_dir())


def download_name(download: Download) -> str:
    """The file name a download's URL ends in."""
    return urlsplit(download.url).path.rstrip("/").rsplit("/", 1)[-1] or download.url


def pinned_downloads(profile: Profile, runtime: Optional[str] = None) -> List[Tuple[str, Download]]:
    """(step, download) for every pinned file a lab of ``profile`` fetches (every runtime's when
    ``runtime`` is None)."""
    found = [("cni", profile.calico_manifest)] + [("metallb", d) for d in profile.metallb_manifests]
    if profile.cri_dockerd is not None and profile.needs_cri_dockerd and runtime in (None, "docker"):
        found.insert(0, ("kubernetes", profile.cri_dockerd))
    if profile.kubernetes_node_archive is not None:
        found.insert(0, ("kubernetes", profile.kubernetes_node_archive))
    found += [("kubernetes", d) for d in profile.kubernetes_binaries.values()]
    return [(step, d) for step, d in found if d is not None and d.url and d.checksum]


def _key(download: Download) -> Tuple[str, str]:
    algo, want = ("sha256", download.sha256) if download.sha256 else ("sha512", download.sha512)
    want = (want or "").lower()
    if len(want) != hashlib.new(algo).digest_size * 2 or want.strip("0123456789abcdef"):
        raise ValueError(f"{download.url} has no pinned {algo} sum: the cache keeps only pinned files")
    return algo, want


def file_key(download: Download) -> str:
    """``sha256/<hex>`` (or ``sha512/<hex>``): where the cache keeps the download under ``files/``."""
    return "/".join(_key(download))


def mib(size: float) -> str:
    """A size for a message: ``12.3 MiB``."""
    return f"{size / (1 << 20):.1f} MiB"


def progress_text(item: str, done: int, total: Optional[int], rate: float) -> str:
    """A :data:`Progress` report as text, the numbers first (a narrow terminal cuts the end):
    ``1.2 MiB/3.4 MiB (35%) at 5.6 MiB/s: calico.yaml``."""
    of = f"/{mib(total)} ({100 * done // total}%)" if total else ""
    return f"{mib(done)}{of} at {mib(rate)}/s: {item}"


class CopyProgress:
    """The bytes and rate of a long copy (a :data:`lab.cache.Progress`) as the running step's
    sub-action of a :class:`lab.progress.Progress`: redrawn in place on a terminal, nothing
    elsewhere; :meth:`line` is the one line of a finished item (on its own line in a log)."""

    def __init__(self, progress):
        self.progress = progress

    def __call__(self, item: str, done: int, total: Optional[int], rate: float) -> None:
        if self.progress.live:
            self.progress.action(progress_text(item, done, total, rate))

    def line(self, text: str) -> None:
        """One line for a finished item."""
        self.progress.action(text)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to https URLs only, as fetch.sh's curl ``--proto-redir =https``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme != "https":
            raise urllib.error.HTTPError(newurl, code, f"redirect to {newurl} refused (https only)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Cache(EntriesMixin):
    """The cache at ``root``. ``context``: the TLS context downloads verify servers with."""

    def __init__(self, root, *, context: Optional[ssl.SSLContext] = None, timeout: float = DOWNLOAD_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(os.path.abspath(os.path.expanduser(str(root))))
        self.timeout = timeout
        self.clock = clock
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context or ssl.create_default_context()), _HttpsOnlyRedirects)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ writing, safely

    def error(self, exc: OSError, what: str) -> CacheError:
        """One line for a failed write of ``what``, naming the setting and the fix."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return CacheError(f"{SETTING}: no space left in {self.root} while writing {what}; free space there or "
                              f"set {SETTING} to a directory with room (the cache is as it was)")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return CacheDirError(f"{SETTING}: {self.root} is not writable ({exc.strerror}); give a directory you can "
                                 "write, or fix its permissions")
        if exc.errno == errno.ENOTDIR:
            return CacheDirError(f"{SETTING}: {self.root} lies under a file, not a directory; set {SETTING} to a "
                                 "directory path")
        return CacheError(f"{SETTING}: cannot write {what} in {self.root} ({exc.strerror or exc}); "
                          f"fix that directory or set {SETTING} to another")

    def directory(self, *parts: str) -> Path:
        """``root/parts`` created (0700 where new), or one :class:`CacheError` line."""
        path = self.root.joinpath(*parts)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        except OSError as exc:
            if isinstance(exc, FileExistsError) or path.exists() and not path.is_dir():
                raise CacheDirError(f"{SETTING}: {path} is a file, not a directory; remove it or set {SETTING} "
                                    "to another directory") from None
            raise self.error(exc, str(path)) from None
        return path

    @contextlib.contextmanager
    def staged(self, final: Path, what: str) -> Iterator[BinaryIO]:
        """A file in ``tmp/`` that replaces ``final`` when the block ends without error; removed otherwise."""
        tmpdir = self.directory("tmp")
        try:
            fd, name = tempfile.mkstemp(dir=tmpdir, prefix=final.name[:60] + ".")
        except OSError as exc:
            raise self.error(exc, what) from None
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self.error(exc, what) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def copy(self, read: Callable[[int], bytes], handle: BinaryIO, item: str, total: Optional[int],
             progress: Optional[Progress], algos: Tuple[str, ...] = ("sha256",)) -> Tuple[int, Dict[str, str]]:
        """Copy ``read`` to ``handle``, hashing with ``algos``; return the size and the sums."""
        sums = {a: hashlib.new(a) for a in algos}
        done, start = 0, self.clock()
        last = start
        while True:
            try:
                chunk = read(CHUNK)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise SourceError(f"reading {item} failed after {mib(done)}: {exc}") from None
            if not chunk:
                break
            handle.write(chunk)
            for h in sums.values():
                h.update(chunk)
            done += len(chunk)
            now = self.clock()
            if progress is not None and now - last >= PROGRESS_EVERY_S:
                progress(item, done, total, done / max(now - start, 1e-9))
                last = now
        if progress is not None:
            progress(item, done, total, done / max(self.clock() - start, 1e-9))
        return done, {a: h.hexdigest() for a, h in sums.items()}

    def put(self, final: Path, source: Source, item: str, *, progress: Optional[Progress] = None,
            sha256: Optional[str] = None, size: Optional[int] = None) -> Tuple[int, str]:
        """Copy ``source`` (a path or a binary stream) to ``final``, checked against ``sha256`` and
        ``size`` when given; return (size, sha256). A mismatch raises :class:`SourceError`."""
        with contextlib.ExitStack() as stack:
            try:
                stream = stack.enter_context(open(source, "rb")) if isinstance(source, Path) else source
            except OSError as exc:
                raise SourceError(f"cannot read {source}: {exc.strerror}") from None
            total = size if size is not None else (source.stat().st_size if isinstance(source, Path) else None)
            try:
                with self.staged(final, item) as handle:
                    got, sums = self.copy(stream.read, handle, item, total, progress)
                    if (sha256 is not None and sums["sha256"] != sha256.lower()) or (size is not None and got != size):
                        raise _Mismatch(f"{item}: got {got} bytes with sha256 {sums['sha256']}, expected "
                                        f"{size if size is not None else '?'} bytes with sha256 {sha256 or '?'}")
            except _Mismatch as exc:
                raise SourceError(f"{exc} (nothing was cached)") from None
        return got, sums["sha256"]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Holds the cache's lock (threads of this process and other processes) for an index update."""
        with self._lock:
            path = self.directory() / ".lock"
            try:
                handle = open(path, "a")
            except OSError as exc:
                raise self.error(exc, str(path)) from None
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield

    def read_index(self, path: Path, default):
        """The JSON at ``path`` (``default`` when absent), or one line saying it is damaged."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not JSON"
            raise CacheError(f"{SETTING}: {path} cannot be read ({why}); remove it (the cache forgets what it "
                             "listed; `invoke lab.cache --prune` then removes those files)") from None
        if not isinstance(data, type(default)) or (isinstance(data, dict) and data.get("version", INDEX_VERSION) != INDEX_VERSION):
            raise CacheError(f"{SETTING}: {path} is not an index of this version of the lab; remove it")
        return data

    def entry(self, kind, data, path: Path):
        """An :class:`ImageEntry` or :class:`BoxEntry` from its index record, or one line saying it is damaged."""
        try:
            if isinstance(data.get("profiles"), list):
                data = {**data, "profiles": tuple(data["profiles"])}
            entry = kind(**data)
            if not all(isinstance(getattr(entry, k), t) for k, t in (("file", str), ("size", int), ("sha256", str))):
                raise TypeError(data)
            if "/" in entry.file or entry.file.startswith(".") or (
                    isinstance(entry, ImageEntry) and not IMAGE_REF.fullmatch(str(entry.ref))):
                raise TypeError(data)
            return entry
        except (TypeError, AttributeError):
            raise CacheError(f"{SETTING}: {path} has a damaged entry; remove the file (the cache forgets what "
                             "it listed; `invoke lab.cache --prune` then removes those files)") from None

    def write_index(self, path: Path, data) -> None:
        """Replace the index ``path`` atomically."""
        with self.staged(path, str(path)) as handle:
            handle.write((json.dumps(data, indent=1, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ pinned files

    def file_path(self, download: Download) -> Path:
        """Where the cache keeps ``download`` (whether or not it is there)."""
        return self.root / "files" / file_key(download)

    def has(self, download: Download) -> bool:
        """True when the cache holds ``download``."""
        return self.file_path(download).is_file()

    def _sum_ok(self, path: Path, download: Download) -> bool:
        algo, want = _key(download)
        digest = hashlib.new(algo)
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest() == want

    def ensure(self, download: Download, *, progress: Optional[Progress] = None,
               report: Optional[Report] = None) -> Path:
        """The cached file of ``download``, fetched once by the host over https (the URL, then each
        mirror in turn; the pinned sum decides which bytes are kept). Raises :class:`DownloadError`
        with every URL's reason when none gives the pinned file, and caches nothing then."""
        report = report or (lambda line: None)
        name, path = download_name(download), self.file_path(download)
        algo, want = _key(download)
        if path.is_file():
            if self._sum_ok(path, download):
                report(f"{name}: from the cache")
                return path
            report(f"{name}: the cached copy is damaged; fetching it again")
        failures = []
        for url in (download.url, *download.mirrors):
            if urlsplit(url).scheme != "https":
                failures.append(f"{url}: not an https URL (the lab downloads over https only)")
                continue
            started = self.clock()
            try:
                response = self._opener.open(urllib.request.Request(url, headers={"User-Agent": "dslab"}),
                                             timeout=self.timeout)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
                continue
            length = response.headers.get("Content-Length")
            try:
                with response, self.staged(path, name) as handle:
                    size, sums = self.copy(response.read, handle, name, int(length) if length and length.isdigit()
                                           else None, progress, (algo,))
                    if sums[algo] != want:
                        raise _Mismatch(f"checksum mismatch for {url}: expected {want}, got {sums[algo]}")
            except _Mismatch as exc:
                failures.append(str(exc))
                continue
            except SourceError as exc:
                failures.append(f"{url}: {exc}")
                continue
            seconds = max(self.clock() - started, 1e-9)
            report(f"{name}: fetched {mib(size)} from {url} ({mib(size / seconds)}/s)")
            return path
        raise DownloadError(f"{name}: {'; '.join(failures)}; no URL gave the pinned file (nothing was cached)")
