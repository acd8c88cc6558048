"""The lab configuration: load it, then read it as a :class:`LabConfig`.

Settings come from invoke's configuration under ``lab`` (``invoke.yaml`` beside
``tasks.py``, ``-f FILE``, ``INVOKE_LAB_*`` variables) and task flags. :func:`load` runs
three steps, as kind does (defaults, then validation, then use):

1. :func:`lab.defaults.merged_settings`: the embedded :data:`DEFAULTS` under the user's
   settings and the flags;
2. :func:`lab.defaults.fill_defaults`: what depends on other settings (the profile's
   runtime and box, the node plan);
3. :func:`lab.validate.validate`: every check, collected into one
   :class:`~lab.errors.ConfigError` listing *every* problem, one line each; no task makes
   anything before it passed.

The names other modules use are importable from here.
"""

from __future__ import annotations

import json
from typing import Mapping, Optional

from .defaults import fill_defaults, merged_settings
from .errors import ConfigError
from .safeyaml import BoundedLoader, load_yaml
from .settings import (DEFAULTS, PROJECT_DIR, AddressRange, LabConfig, Node, dir_problem, key_text, shown,
                       state_dir_path)
from .validate import validate

__all__ = ["DEFAULTS", "PROJECT_DIR", "AddressRange", "BoundedLoader", "ConfigError", "LabConfig", "Node",
           "describe", "dir_problem", "fill_defaults", "key_text", "load", "load_yaml", "merged_settings",
           "shown", "state_dir_path", "validate"]


def load(user: Optional[Mapping] = None, **overrides) -> LabConfig:
    """Load, default and validate the lab configuration.

    ``user`` is invoke's ``c.config.lab`` (or any mapping); ``overrides`` are task flags.
    Raises :class:`ConfigError` with every problem found.
    """
    return validate(fill_defaults(merged_settings(user, **overrides)))


def describe(cfg: LabConfig) -> str:
    """A JSON document of the effective settings (for ``invoke lab.config``)."""
    out = {}
    for key in DEFAULTS:
        value = getattr(cfg, key, cfg.raw.get(key))
        if key == "profile":
            value = cfg.profile.name
        elif key == "workers":
            value = len(cfg.workers)
        elif key == "nodes":
            value = [{"name": n.name, "role": n.role, "ipv4": str(n.ipv4), "ipv6": str(n.ipv6)} for n in cfg.nodes]
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        elif value is not None and not isinstance(value, (int, str)):
            value = str(value)
        out[key] = value
    return json.dumps(out, indent=2)
