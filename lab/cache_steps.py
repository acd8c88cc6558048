"""The host's cache in ``lab.up``: what the steps call, on a step :class:`~lab.context.Context`.

- :func:`push` before a node runs ``fetch.sh`` for a pinned file: the host fetches it once into the
  cache and copies it to the file's destination, where fetch.sh finds the pinned sum and fetches
  nothing (``DEST already there with the right sum: nothing is done``);
- :func:`push_kubernetes_files` at the start of ``kubernetes`` (cri-dockerd, the 1.17 node tarball);
- :func:`restore_packages` at the start of ``prepare``: the package managers keep what they
  download, and the packages of the previous lab are put back first;
- :func:`load_images` (a step before ``control-plane``): every cached image of the profile a node
  lacks is loaded, so kubeadm, Calico, MetalLB, nginx and lab.verify pull nothing the cache holds;
- :func:`export_images` (the last step): every image a node holds that the cache lacks goes into
  it, and the kept packages are collected; after a whole lab (through ``workloads``) lab.verify's
  client image is pulled first, and the images the nodes hold are recorded as the profile's for
  ``lab.offline`` and for the next lab's ``images`` step, which then loads only those.

Each item is one line in the run's log; bytes and rate show on a terminal only. A context with
no ``cache`` (one made by hand, as tests do) makes every hook do nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional

from . import cache as labcache
from . import cache_sync
from .cache_offline import required_images
from .images import normalise, pull_command
from .nodefiles import upload_inputs
from .private import append_private
from .profiles import Download



def _cache(ctx) -> Optional[labcache.Cache]:
    return getattr(ctx, "cache", None)


def _transfer(ctx) -> cache_sync.Transfer:
    """The context's transfer (tests give one), else one over its ssh runner."""
    return getattr(ctx, "transfer", None) or cache_sync.SshTransfer(ctx.runner, ctx.step or "cache")


def _report(ctx) -> Callable[[str], None]:
    def report(line: str) -> None:
        if ctx.log_path is not None:
            append_private(ctx.log_path, f"cache: {line}")
    return report


def _progress(ctx) -> Optional[labcache.Progress]:
    progress = getattr(ctx, "progress", None)
    if progress is None or not getattr(progress, "live", False):
        return None  # a line per update would flood a log; the item's one line says it all
    return labcache.CopyProgress(progress)


def _on_nodes(nodes: Iterable, action: Callable) -> None:
    nodes = list(nodes)
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        futures = [pool.submit(action, node) for node in nodes]
    for future in futures:
        future.result()


def _upload(ctx, node) -> None:
    upload_inputs(ctx, node)


def _tell(ctx, text: str) -> None:
    """Add ``text`` to what the running step says on its ``✓`` line."""
    if hasattr(ctx, "summary"):
        ctx.summary = f"{ctx.summary}; {text}" if ctx.summary else text


def push(ctx, node: str, download: Download, dest: str) -> None:
    """The pinned ``download`` at ``dest`` on ``node``, from the host's cache (fetched once into it)."""
    if _cache(ctx) is not None and cache_sync.push_download(ctx.runner, _transfer(ctx), node, _cache(ctx), download,
                                                            dest, _report(ctx), _progress(ctx)):
        _tell(ctx, f"{labcache.download_name(download)} to {node} from the host's cache")


def push_kubernetes_files(ctx) -> None:
    """cri-dockerd's tarball and the Kubernetes node tarball where cri-dockerd.sh and kubernetes.sh fetch them."""
    pins = [pin for step, pin in labcache.pinned_downloads(ctx.cfg.profile, ctx.cfg.runtime) if step == "kubernetes"]

    def on_node(node) -> None:
        for pin in pins:
            push(ctx, node.name, pin, cache_sync.remote_download(pin))
    if pins and _cache(ctx) is not None:
        _on_nodes(ctx.cfg.nodes, on_node)


def restore_packages(ctx) -> None:
    """On every node: the package manager keeps its downloads; the cached ones are put back."""
    cache, transfer, report = _cache(ctx), _transfer(ctx), _report(ctx)
    if cache is None:
        return

    def on_node(node) -> None:
        _upload(ctx, node)
        ctx.runner.run(node.name, cache_sync.script("cache-packages.sh", "keep"))
        counts.append(cache_sync.restore_packages(ctx.runner, transfer, node.name, cache, ctx.cfg.profile.name, report))
    counts: list = []
    _on_nodes(ctx.cfg.nodes, on_node)
    if sum(counts):
        _tell(ctx, f"{sum(counts)} packages put back from the host's cache")


def wanted_refs(cfg, cache: labcache.Cache) -> Optional[list]:
    """The images a lab of ``cfg`` uses, when the cache knows them all (a complete lab of the profile
    and runtime recorded them), else None: then every cached image of the profile is wanted."""
    refs, complete = required_images(cfg, cache)
    return refs if complete else None


def _pull_client_image(ctx, cache: labcache.Cache, report) -> None:
    """lab.verify's client image, pulled once on the control plane when the cache lacks it (only
    lab.verify runs it, after lab.up): the export that follows keeps it for an offline lab."""
    ref = normalise(ctx.cfg.profile.client_image)
    if cache.lookup(ref) is not None:
        return
    node = ctx.cfg.control_plane.name
    pulled = ctx.runner.run(node, pull_command(ctx.cfg.runtime, ref), check=False, timeout=900)
    report(f"{node}: {ref} pulled for lab.verify" if pulled.ok else
           f"{node}: {ref} (lab.verify's client) could not be pulled: {(pulled.stderr or pulled.stdout).strip()[-200:]}")


def load_images(ctx) -> None:
    """On every node, every cached image of the profile it lacks (only those the lab uses, once known)."""
    cache, transfer, report, progress = _cache(ctx), _transfer(ctx), _report(ctx), _progress(ctx)
    if cache is None:
        return

    def on_node(node) -> None:
        _upload(ctx, node)
        count = cache_sync.load_images(ctx.runner, transfer, node.name, cache, ctx.cfg.profile.name, ctx.cfg.runtime,
                                       report, progress, refs)
        report(f"{node.name}: {count} images loaded from the host's cache")
        counts.append(count)
    counts: list = []
    refs = wanted_refs(ctx.cfg, cache)
    _on_nodes(ctx.cfg.nodes, on_node)
    cached = len(cache.images(ctx.cfg.profile.name))
    _tell(ctx, f"{sum(counts)} images loaded from the host's cache" if sum(counts) else
          f"every one of the {cached} cached images is on the nodes" if cached else "the host's cache has no image yet")


def export_images(ctx) -> None:
    """Node by node (an image two nodes hold is copied once): images into the cache, then kept packages;
    the images the nodes held are recorded as the profile's."""
    cache, transfer, report, progress = _cache(ctx), _transfer(ctx), _report(ctx), _progress(ctx)
    if cache is None:
        return
    complete = "workloads" in getattr(ctx, "steps", ())
    if complete:
        _pull_client_image(ctx, cache, report)
    listed = {}

    def list_node(node) -> None:  # every node at once: the copies then go node by node
        _upload(ctx, node)
        listed[node.name] = (cache_sync.node_image_list(ctx.runner, node.name, ctx.cfg.runtime),
                             cache_sync.kept_packages(ctx.runner, node.name))
    _on_nodes(ctx.cfg.nodes, list_node)
    held, before, packages = set(), len(cache.images()), 0
    for node in ctx.cfg.nodes:
        on_node, kept = listed[node.name]
        held.update(cache_sync.export_images(ctx.runner, transfer, node.name, cache, ctx.cfg.profile.name,
                                             ctx.cfg.runtime, report, progress, on_node=on_node))
        packages += cache_sync.collect_packages(ctx.runner, transfer, node.name, cache, ctx.cfg.profile.name, report,
                                                rows=kept)
    if complete:  # what a whole lab holds: a run --until an earlier step would record too little
        cache.record_needed(ctx.cfg.profile.name, ctx.cfg.runtime, held)
    images = len(cache.images()) - before
    _tell(ctx, f"{images} images and {packages} packages added to the host's cache" if images or packages
          else "the host's cache had everything already")
