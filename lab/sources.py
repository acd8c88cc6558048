"""Where settings come from: invoke's config files and ``INVOKE_LAB_*`` variables, read
so that no input can make invoke fail with a traceback.

invoke reads its project file (``invoke.yaml`` beside ``tasks.py``) and ``-f FILE`` (or
``INVOKE_RUNTIME_CONFIG``) after it has imported the tasks, and the environment when it runs
a task. :func:`install` replaces those readers on :class:`invoke.Config`:

* YAML files are read with :class:`lab.config.BoundedLoader` (no tags, no alias bombs);
  a file that cannot be read, or whose ``lab`` is not a mapping, adds one problem and
  contributes nothing; ``lab: null`` means the defaults;
* a setting given a mapping is reported and dropped (invoke could not merge it);
* ``INVOKE_LAB_*`` variables are read here, not by invoke (which casts a text value to the
  type a file gave the setting and fails on ``cpus: 2`` with ``INVOKE_LAB_CPUS=x``, and
  drops unknown names silently): each one is kept as text, and a name that is not a
  setting is a problem with a did-you-mean.

* ``-f FILE`` must name an existing file of a type invoke reads (``.yaml``, ``.yml``,
  ``.json``, ``.py``); a ``.py`` file that fails to run is one problem, not a traceback;
* the user and system files (``~/.invoke.yaml``, ``/etc/invoke.yaml``) are read by invoke
  before the tasks are imported; they are read again here, at the first merge after, so
  their ``lab`` is checked like the project file's. A syntax error or a tag in them still
  stops invoke itself before any code of the lab runs (nothing of the lab is imported yet);
* a value that invoke cannot merge (a mapping where another source has a single value, or
  the reverse) is reported and dropped from the file or environment that gave it.

The problems are kept in :data:`PROBLEMS` and reported, with the settings' own, by every
task (:func:`lab.tasks._load`).
"""

from __future__ import annotations

import difflib
import io
import errno
import os
from pathlib import Path
from typing import Any, List

import yaml
from invoke import Config
from invoke.config import AmbiguousMergeError, merge_dicts
from invoke.exceptions import UnknownFileType, UnpicklableConfigMember

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
            text = handle.read()
        data = lab_config.load_yaml(io.StringIO(text), str(path))
    except FileNotFoundError:
        raise  # invoke goes on to the next suffix (or records "not found")
    except OSError as exc:
        _unreadable(path, exc)
        return {}
    except ConfigError as exc:
        for line in exc.problems:
            _add(line)
        return {}
    except UnicodeDecodeError:
        _add(f"lab: {path} is not UTF-8 text; save it as UTF-8")
        return {}
    if isinstance(data, dict):
        # The lab's settings follow YAML 1.2's core rules (010 and yes stay text); invoke's own
        # settings keep the YAML 1.1 meaning invoke gives them (`dedupe: no` is false). The
        # document passed the bounded checks above, so reading it again is safe.
        classic = yaml.safe_load(text)
        if isinstance(classic, dict):
            data = {**{k: v for k, v in classic.items() if k != "lab"}, **({"lab": data["lab"]} if "lab" in data else {})}
    return clean_document(data, str(path))


def _unreadable(path, exc: OSError) -> None:
    what = "is a directory" if exc.errno == errno.EISDIR else f"cannot be read ({os.strerror(exc.errno or 0)})"
    _add(f"lab: {path} {what}; give the path of a readable config file")


def _load_json(self, path):
    try:
        data = _ORIGINAL["_load_json"](self, path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        _unreadable(path, exc)
        return {}
    except (ValueError, UnicodeDecodeError) as exc:
        _add(f"lab: {path}: {lab_config.shown(str(exc))}; fix the JSON")
        return {}
    return clean_document(data, str(path))


def _load_py(self, path):
    """invoke's Python config reader: a file that is missing is "not found" (invoke's own
    reader takes it as empty), one that fails to run is one problem."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    try:
        data = _ORIGINAL["_load_py"](self, path)
    except OSError as exc:
        _unreadable(path, exc)
        return {}
    except SyntaxError as exc:
        _add(f"lab: {path} line {exc.lineno}: {lab_config.shown(exc.msg)} (a Python syntax error); fix the file")
        return {}
    except UnpicklableConfigMember as exc:
        _add(f"lab: {path}: {lab_config.shown(str(exc))}; keep only settings in a Python config file")
        return {}
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the file is the user's own code
        _add(f"lab: {path} failed when run: {type(exc).__name__}: {lab_config.shown(str(exc))}; fix the file")
        return {}
    return clean_document(data, str(path))


def _load_runtime(self, merge: bool = True):
    """invoke's reader of ``-f FILE``: a file it cannot read, or one that does not exist
    (invoke would go on with the defaults), is a problem."""
    path = self._runtime_path
    given = ("INVOKE_RUNTIME_CONFIG" if path is not None and os.environ.get("INVOKE_RUNTIME_CONFIG") == path
             else "-f")
    if path is not None and not str(path).strip():
        _add(f"lab: {given} is empty; give the path of a config file")
        self._set(_runtime_found=False)
        return
    try:
        _ORIGINAL["load_runtime"](self, merge=merge)
    except UnknownFileType:
        _add(f"lab: {given} {path} is not a file type invoke reads; name a .yaml, .yml, .json or .py file")
        self._set(_runtime={}, _runtime_found=False, _runtime_path=None)
        return
    if path is not None and not self._runtime_found:  # None: invoke saw no such file
        _add(f"lab: {given} {path} does not exist; give the path of an existing config file")


#: invoke's config layers in the order it merges them (invoke/config.py, Config.merge).
_LAYERS = ("defaults", "collection", "system", "user", "project", "env", "runtime", "overrides", "modifications")
#: The layers whose values come from the user: a value invoke cannot merge is dropped from these.
_USER_LAYERS = {"system", "user", "project", "env", "runtime"}


def _clashes(base: dict, data: dict, keypath=()):
    """Key paths where one of ``base``/``data`` holds a mapping and the other does not."""
    for key, value in data.items():
        if key not in base:
            continue
        mine, theirs = isinstance(value, dict), isinstance(base[key], dict)
        if mine and theirs:
            yield from _clashes(base[key], value, keypath + (key,))
        elif mine != theirs:
            yield keypath + (key,), mine


def _without(data: dict, keypath) -> dict:
    data = dict(data)
    if len(keypath) == 1:
        data.pop(keypath[0], None)
    else:
        data[keypath[0]] = _without(data[keypath[0]], keypath[1:])
    return data


def _source_name(config, layer: str) -> str:
    if layer == "env":
        return f"an {config._env_prefix}* variable"
    return str(getattr(config, f"_{layer}_path", None) or layer)


def _drop_clashes(config) -> None:
    """Take out of the user's layers every value invoke's merge would fail on; one problem each."""
    shape: dict = {}
    for layer in _LAYERS:
        data = getattr(config, f"_{layer}")
        if layer in _USER_LAYERS:
            for keypath, is_mapping in list(_clashes(shape, data)):
                data = _without(data, keypath)
                name = ".".join(lab_config.key_text(k) for k in keypath)
                given, wanted = ("a mapping", "a single value") if is_mapping else ("a single value", "a mapping")
                where = f"{name}: " if keypath[0] == "lab" else f"lab: '{name}' in "
                _add(f"{where}{_source_name(config, layer)} gives {given} where {wanted} belongs; "
                     "fix or remove it")
            config._set(f"_{layer}", data)
        merge_dicts(shape, data)


def _reread_base_files(config) -> None:
    """Read the user and system files again with this module's readers (once per config)."""
    for layer in ("system", "user"):
        flag = f"_lab_{layer}_reread"
        if vars(config).get(flag) or not getattr(config, f"_{layer}_found"):
            continue
        config._set(flag, True)
        path = getattr(config, f"_{layer}_path")
        if Path(path).suffix in (".yaml", ".yml"):
            try:  # bounded this time (invoke's own reader follows every alias)
                data = _load_yaml(config, path)
            except FileNotFoundError:
                data = {}  # gone since invoke read it
        else:  # JSON has no aliases; a .py file is not run twice
            data = clean_document(getattr(config, f"_{layer}"), str(path))
        config._set(f"_{layer}", data)


def _merge(self):
    """invoke's merge, after the checks above: it never fails on what a user wrote."""
    _reread_base_files(self)
    try:
        _ORIGINAL["merge"](self)
    except AmbiguousMergeError:
        _drop_clashes(self)
        _ORIGINAL["merge"](self)


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
                              ("_load_json", _load_json), ("_load_py", _load_py),
                              ("load_runtime", _load_runtime), ("merge", _merge),
                              ("load_shell_env", _load_shell_env)):
        _ORIGINAL[name] = getattr(Config, name)
        setattr(Config, name, replacement)
