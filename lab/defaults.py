"""Defaults: every setting the user did not set, filled in one step before validation.

:func:`merged_settings` lays the user's settings and the task flags over the embedded
:data:`~lab.settings.DEFAULTS`; :func:`fill_defaults` then fills what depends on other
settings: the runtime, box and box URL from the profile, and the node plan from the node
network and ``lab.workers``. Neither checks anything: a value the user gave is kept as
given, and a default that cannot be derived (an unknown profile, an unreadable network) is
left unset for :mod:`lab.validate` to report the cause.
"""

from __future__ import annotations

from typing import List, Mapping, Optional

from .parse import Problems, read_int, read_network
from .profiles import PROFILES
from .settings import CONTROL_PLANE_HOST, DEFAULTS, FIRST_WORKER_HOST, WORKERS_MAX, default_cache_dir


def _plain(value):
    """Turn invoke's DataProxy objects (and nested ones) into plain dicts and lists."""
    if isinstance(value, Mapping) or hasattr(value, "_config"):
        return {k: _plain(value[k]) for k in value}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def merged_settings(user: Optional[Mapping] = None, **overrides) -> dict:
    """Merge :data:`DEFAULTS`, the user's settings and explicit overrides.

    ``None`` in the user's settings means "not set". Unknown keys are kept so that
    validation can report them.
    """
    settings = dict(DEFAULTS)
    for source in (_plain(user or {}), overrides):
        for key, value in source.items():
            if value is not None:
                settings[key] = value
    return settings


def node_plan(settings: Mapping) -> Optional[List[dict]]:
    """The derived node list (``k8s-master01`` at host 11, ``k8s-workerNN`` from host 21, the
    same host part in both families), or None when the networks or ``lab.workers`` cannot be
    read (validation names them)."""
    unread = Problems()
    net4 = read_network(unread, settings, "network_ipv4", 4)
    net6 = read_network(unread, settings, "network_ipv6", 6)
    workers = read_int(unread, settings, "workers", 1, WORKERS_MAX)
    if net4 is None or net6 is None or workers is None:
        return None
    planned = [("k8s-master01", "control-plane", CONTROL_PLANE_HOST)]
    planned += [(f"k8s-worker{i:02d}", "worker", FIRST_WORKER_HOST + i - 1) for i in range(1, workers + 1)]
    try:
        return [{"name": name, "role": role, "ipv4": str(net4.network_address + host),
                 "ipv6": str(net6.network_address + int(str(host), 16))} for name, role, host in planned]
    except ValueError:  # past the end of the address space
        return None


def fill_defaults(settings: Mapping) -> dict:
    """``settings`` with every default that depends on other settings filled in (a new dict).

    * ``runtime``: the profile's first runtime, when not set (or empty);
    * ``box``: the profile's box, when not set; ``box_url``: the profile's, when neither the
      box nor its URL is set (a box of the user's own comes from where Vagrant finds it);
    * ``nodes``: :func:`node_plan`, when no node list is given;
    * ``cache_dir``: :func:`~lab.settings.default_cache_dir`, when not set.
    """
    filled = dict(settings)
    name = filled.get("profile")
    profile = PROFILES.get(name) if isinstance(name, str) else None
    if profile is not None:
        if filled.get("runtime") in (None, ""):
            filled["runtime"] = profile.runtimes[0]
        if filled.get("box") is None:
            filled["box"] = profile.box
            if filled.get("box_url") is None:
                filled["box_url"] = profile.box_url
    if filled.get("nodes") is None:
        filled["nodes"] = node_plan(filled)
    if filled.get("cache_dir") is None:
        filled["cache_dir"] = str(default_cache_dir())
    return filled
