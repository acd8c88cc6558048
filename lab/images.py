"""Container images on the nodes: the commands that list, export and load them, and their output.

Docker (docker-ce 19.03 of ``seed-2020`` and today's): ``docker image ls --digests --no-trunc
--format '{{json .}}'`` prints one JSON object per image and tag (docker/cli
cli/command/formatter/image.go, the same fields at v19.03.5 and v29: ``Repository`` in its
familiar form, ``Tag``, ``Digest`` (the registry's, ``<none>`` for a loaded image), ``ID``);
``docker save -o FILE REF`` and ``docker load -i FILE``, which prints ``Loaded image: REF`` per
tag, or ``Loaded image ID: ID`` for an untagged image (moby image/tarexport/load.go). An image
is keyed by its ID, which ``docker save``/``docker load`` keep, unlike the registry digest.
A row with a digest and no tag (an image pulled by digest, or one a newer pull of its tag left
behind) is not listed: ``docker save`` records no name for a digest reference (moby
image/tarexport/save.go, ``addAssoc``, v19.03.5 and v29), so its tarball would load as a
nameless image that no pod could find. The recipe's daemon.json sets ``storage-driver``, so
Docker 29 keeps its images in that graph driver, not in containerd (moby
daemon/image_store_choice.go): the ID stays the image's config digest.

containerd (``lab.runtime: containerd``, the CRI's namespace ``k8s.io``): ``ctr -n k8s.io images
ls`` prints ``REF TYPE DIGEST SIZE PLATFORMS LABELS`` under a header, SIZE as two words
("27.1 MiB"), and lists every name the CRI gives an image: its tag, ``repo@sha256:...`` and the
bare ``sha256:<config>`` (containerd cmd/ctr/commands/images/images.go, v1.2.10 to v2.2). An
image is keyed by its target (manifest or index) digest. ``ctr -n k8s.io images export FILE
REF`` writes an OCI archive of the default platform with a Docker ``manifest.json``, and
``ctr -n k8s.io images import FILE`` keeps the names stored in it (v1.7 and v2.x; 1.2's import
prefixes them with ``import-<date>`` and is not used: containerd 1.2 only runs Docker there).
"""

from __future__ import annotations

import json
import re
from typing import Iterable, List, NamedTuple, Optional, Sequence

import yaml

from .cache import Cache, ImageEntry
from .cache_entries import DIGEST, IMAGE_REF

#: Where the node scripts put image tarballs on their way to and from the host's cache.
REMOTE_SPOOL = "/var/cache/dslab/images"
CTR = ("ctr", "-n", "k8s.io")
DOCKER_FORMAT = "{{json .}}"
RUNTIMES = ("docker", "containerd")
_LOADED = re.compile(r"^Loaded image: (\S+)\s*$", re.M)
_LOADED_ID = re.compile(r"^Loaded image ID: (sha256:[0-9a-f]{64})\s*$", re.M)


class NodeImage(NamedTuple):
    """An image on a node: a full reference and the digest its runtime keys it by."""

    ref: str
    digest: str


def normalise(ref: str) -> str:
    """The full reference of ``ref`` as Docker resolves a familiar one (distribution/reference
    normalize.go, splitDockerDomain): ``nginx:1.17`` is ``docker.io/library/nginx:1.17``; no tag
    and no digest means ``:latest``."""
    first, sep, rest = ref.partition("/")
    if not sep or not (set(first) & set(".:") or first == "localhost"):
        domain, remainder = "docker.io", ref
    else:
        domain, remainder = first, rest
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    last = remainder.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        remainder += ":latest"
    return f"{domain}/{remainder}"


def pull_command(runtime: str, ref: str) -> List[str]:
    """The command that pulls ``ref`` (a full reference, :func:`normalise`) into ``runtime``'s store."""
    if not IMAGE_REF.fullmatch(ref):
        raise ValueError(f"not an image reference: {ref!r}")
    if runtime == "docker":
        return ["docker", "pull", "--", ref]
    return [*CTR, "images", "pull", "--", ref]


def list_command(runtime: str) -> List[str]:
    """The command that lists the images of ``runtime`` with their digests."""
    if runtime == "docker":
        return ["docker", "image", "ls", "--digests", "--no-trunc", "--format", DOCKER_FORMAT]
    if runtime == "containerd":
        return [*CTR, "images", "ls"]
    raise ValueError(f"unknown runtime {runtime!r}")


def _parse_docker(text: str) -> List[NodeImage]:
    found = []
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        repo, tag, image_id = row.get("Repository", "<none>"), row.get("Tag", "<none>"), row.get("ID", "")
        if repo == "<none>" or not DIGEST.fullmatch(image_id):
            continue
        if tag != "<none>":
            found.append(NodeImage(normalise(f"{repo}:{tag}"), image_id))
    return found


def _parse_ctr(text: str) -> List[NodeImage]:
    rows = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] == "REF" or words[0].startswith("sha256:") or not DIGEST.fullmatch(words[2]):
            continue
        rows.append(NodeImage(words[0], words[2]))
    tagged = {r.digest for r in rows if "@" not in r.ref}
    return [r for r in rows if "@" not in r.ref or r.digest not in tagged]


def parse_list(runtime: str, text: str) -> List[NodeImage]:
    """The images in the output of :func:`list_command`, one per reference, in its order."""
    try:
        found = _parse_docker(text) if runtime == "docker" else _parse_ctr(text)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"cannot read the image list of {runtime}: {exc}") from None
    seen, unique = set(), []
    for image in found:
        if image.ref not in seen and IMAGE_REF.fullmatch(image.ref):
            seen.add(image.ref)
            unique.append(image)
    return unique


def export_command(runtime: str, ref: str, dest: str) -> List[str]:
    """The command that writes image ``ref`` to the tarball ``dest`` on the node."""
    if runtime == "docker":
        return ["docker", "save", "-o", dest, ref]
    if runtime == "containerd":
        return [*CTR, "images", "export", dest, ref]
    raise ValueError(f"unknown runtime {runtime!r}")


def load_command(runtime: str, path: str) -> List[str]:
    """The command that loads the tarball ``path`` into ``runtime``."""
    if runtime == "docker":
        return ["docker", "load", "-i", path]
    if runtime == "containerd":
        return [*CTR, "images", "import", path]
    raise ValueError(f"unknown runtime {runtime!r}")


def parse_docker_load(text: str) -> List[str]:
    """The references (full) or, for an untagged image, the IDs that ``docker load`` reported."""
    return [normalise(m) for m in _LOADED.findall(text)] + _LOADED_ID.findall(text)


def manifest_images(text: str) -> List[str]:
    """Every image a YAML manifest's pod templates name (containers, initContainers), full, in order."""
    found: List[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(value, list):
                    for container in value:
                        image = container.get("image") if isinstance(container, dict) else None
                        if isinstance(image, str) and normalise(image) not in found:
                            found.append(normalise(image))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in yaml.safe_load_all(text):
        walk(document)
    return found


def to_export(node_images: Iterable[NodeImage], cache: Cache, runtime: str) -> List[NodeImage]:
    """The node's images the cache lacks: no tarball of that reference and digest made by ``runtime``."""
    have = {(e.ref, e.digest) for e in cache.images() if e.producer == runtime}
    return [image for image in node_images if (image.ref, image.digest) not in have]


def to_load(cache: Cache, profile: str, runtime: str, node_images: Iterable[NodeImage],
            refs: Optional[Sequence[str]] = None) -> List[ImageEntry]:
    """The cached images of ``profile`` (only ``refs``, when given) whose reference the node lacks,
    one per reference: the newest made by ``runtime``, else the newest of the other runtime
    (a ``docker save`` tarball loads into containerd, a ``ctr`` export into Docker)."""
    on_node = {image.ref for image in node_images}
    chosen = {}
    for entry in cache.images(profile):  # newest first
        if entry.ref in on_node or (refs is not None and entry.ref not in refs):
            continue
        best = chosen.get(entry.ref)
        if best is None or (best.producer != runtime and entry.producer == runtime):
            chosen[entry.ref] = entry
    return sorted(chosen.values(), key=lambda e: e.ref)


def remote_path(entry: ImageEntry) -> str:
    """Where a cached image's tarball goes on a node before it is loaded."""
    return f"{REMOTE_SPOOL}/{entry.file}"
