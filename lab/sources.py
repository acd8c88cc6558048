"""Where settings come from: invoke's config files and ``INVOKE_LAB_*`` variables, read
so that no input can make invoke fail with a traceback.

invoke reads its project file (``invoke.yaml`` beside ``tasks.py``) and ``-f FILE`` after
it has imported the tasks, and the environment when it runs a task. :func:`install`
replaces those three readers on :class:`invoke.Config`:

* YAML files are read with :class:`lab.config.BoundedLoader` (no tags, no alias bombs);
  a file that cannot be read, or whose ``lab`` is not a mapping, adds one problem and
  contributes nothing; ``lab: null`` means the defaults;
* a setting given a mapping is reported and dropped (invoke could not merge it);
* ``INVOKE_LAB_*`` variables are read here, not by invoke (which casts a text value to the
  type a file gave the setting and fails on ``cpus: 2`` with ``INVOKE_LAB_CPUS=x``, and
  drops unknown names silently): each one is kept as text, and a name that is not a
  setting is a problem with a did-you-mean.

The problems are kept in :data:`PROBLEMS` and reported, with the settings' own, by every
task (:func:`lab.tasks._load`).
"""

from __future__ import annotations

import difflib
import os
from typing import Any, List

from invoke import Config

from . import config as lab_config
from .errors import ConfigError

#: Problems found while invoke read its sources, one line each.
PROBLEMS: List[str] = []

_ORIGINAL = {}


def _add(line: str) -> None:
    if line not in PROBLEMS:
        PROBLEMS.append(line)


def _huge(value) -> bool:
    """True when ``value`` holds an integer too long to print (invoke prints what it loads)."""
    if isinstance(value, int):
        return value.bit_length() > 14_000  # about Python's 4300-digit limit for str(int)
    if isinstance(value, dict):
        return any(_huge(k) or _huge(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return any(_huge(v) for v in value)
    return False


def clean_document(data: Any, source: str) -> dict:
    """``data`` (a loaded config file) with a ``lab`` invoke can merge; problems recorded."""
    if data is None:
        return {}
    if isinstance(data, dict) and any(_huge(k) or _huge(v) for k, v in data.items() if k != "lab"):
        _add(f"lab: {source} holds a number of thousands of digits outside 'lab'; remove it")
        return {}
    if not isinstance(data, dict):
        _add(f"lab: {source} holds {type(data).__name__} at the top; write a mapping with a 'lab:' key")
        return {}
    if "lab" not in data:
        return data
    data = dict(data)
    lab = data.pop("lab")
    if lab is None:
        return data
    if not isinstance(lab, dict):
        _add(f"lab: in {source} is {lab_config.shown(lab)}, not a mapping of settings; "
             "write 'lab:' followed by indented 'setting: value' lines")
        return data
    kept = {}
    for key, value in lab.items():
        if _huge(value):
            _add(f"lab.{lab_config.key_text(key)}: {source} gives a number of thousands of digits; "
                 "give a number in the setting's range")
        elif isinstance(value, dict):
            _add(f"lab.{lab_config.key_text(key)}: {source} gives a mapping where a single value belongs; "
                 "give a single value")
        elif not isinstance(key, str):
            _add(f"lab.{lab_config.key_text(key)}: in {source} is not a setting name; "
                 "`invoke lab.config` lists the settings")
        else:
            kept[key] = value
    data["lab"] = kept
    return data


def _load_yaml(self, path):
    """invoke's YAML reader, bounded and never failing (see the module docstring)."""
    try:
        with open(path) as handle:
            data = lab_config.load_yaml(handle, str(path))
    except ConfigError as exc:
        for line in exc.problems:
            _add(line)
        return {}
    except UnicodeDecodeError:
        _add(f"lab: {path} is not UTF-8 text; save it as UTF-8")
        return {}
    return clean_document(data, str(path))


def _load_json(self, path):
    try:
        data = _ORIGINAL["_load_json"](self, path)
    except (ValueError, UnicodeDecodeError) as exc:
        _add(f"lab: {path}: {lab_config.shown(str(exc))}; fix the JSON")
        return {}
    return clean_document(data, str(path))


def env_settings(environ, prefix: str = "INVOKE_") -> dict:
    """The ``lab`` settings given as ``<prefix>LAB_*`` variables, as text; unknown names
    are problems."""
    head = f"{prefix}LAB_"
    settings = {}
    for name in sorted(environ):
        if not name.startswith(head):
            continue
        key = name[len(head):].lower()
        if key in lab_config.DEFAULTS:
            settings[key] = environ[name]
            continue
        close = difflib.get_close_matches(key, list(lab_config.DEFAULTS), n=1, cutoff=0.75)
        hint = (f"did you mean {head}{close[0].upper()} (lab.{close[0]})?" if close
                else "unset it; `invoke lab.config` lists the settings")
        _add(f"lab.{lab_config.key_text(key)}: {lab_config.key_text(name)} is not a setting; {hint}")
    return settings


def _load_shell_env(self):
    """invoke's environment reader for everything but ``lab``; ``lab`` is read by
    :func:`env_settings`."""
    head = f"{self._env_prefix}LAB_"
    hidden = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(head)}
    try:
        _ORIGINAL["load_shell_env"](self)
    finally:
        os.environ.update(hidden)
    lab = env_settings(hidden, self._env_prefix)
    if lab:
        env = dict(self._env)  # the environment layer: above project files, below -f and flags
        env["lab"] = dict(env.get("lab") or {}, **lab)
        self._set(_env=env)
        self.merge()


def install() -> None:
    """Put the readers above in place on :class:`invoke.Config` (once)."""
    if _ORIGINAL:
        return
    for name, replacement in (("_load_yaml", _load_yaml), ("_load_yml", _load_yaml),
                              ("_load_json", _load_json), ("load_shell_env", _load_shell_env)):
        _ORIGINAL[name] = getattr(Config, name)
        setattr(Config, name, replacement)
