"""Which libvirt objects are this lab's: an id per lab, kept in its state and written into what it creates.

The id is a UUID made once per state directory and kept in ``state.json`` (``lab_id``). Its
first half is derived from the host's name and the state directory's absolute path, its
second half is random. The lab network carries it as its UUID (libvirt 9.0, Debian 12's,
keeps neither a description nor metadata on networks), every machine in its libvirt
``<description>`` (vagrant-libvirt's ``description`` option, see ``Vagrantfile.j2``).

An object is the lab's when it carries the id of the state, or, once the state is gone,
any id whose first half is this state directory's: destroy still finds everything a lab
made after ``.vagrant`` and the state directory were deleted, and a second checkout (another
state directory) with the same lab name owns none of the first one's objects.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import socket
import uuid
from pathlib import Path
from typing import Optional

from . import layout, statedir
from .context import State
from .errors import ConfigError

STATE_KEY = "lab_id"
#: How a machine's libvirt description names the lab it belongs to.
DESCRIPTION_TAG = "dslab-lab-id="
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_IN_DESCRIPTION = re.compile(re.escape(DESCRIPTION_TAG) + f"({_UUID})(?![0-9a-f-])")
_HOME_HEX = 16


def home(state_dir: Path) -> str:
    """The derived half of the ids made for ``state_dir`` on this host (16 hex digits)."""
    where = f"{socket.gethostname()}\0{Path(state_dir).resolve()}"
    return hashlib.sha256(where.encode("utf-8", "surrogateescape")).hexdigest()[:_HOME_HEX]


def new_id(state_dir: Path) -> str:
    """A fresh lab id for ``state_dir``: its :func:`home`, then 64 random bits."""
    return str(uuid.UUID(home(state_dir) + secrets.token_hex(8)))


def valid(value) -> bool:
    """True when ``value`` is a lab id (a lower-case UUID string)."""
    return isinstance(value, str) and re.fullmatch(_UUID, value) is not None


def made_here(value: str, state_dir: Path) -> bool:
    """True when the id ``value`` was made for ``state_dir`` on this host (its first half)."""
    return value.replace("-", "")[:_HOME_HEX] == home(state_dir)


def lab_id(state) -> str:
    """The id kept in ``state`` (a :class:`~lab.context.State`), made and recorded on first use."""
    value = state.get(STATE_KEY)
    if value is None:
        value = new_id(state.path.parent)
        state.set(STATE_KEY, value)
    elif not valid(value):
        raise ConfigError([f"{state.path}: {STATE_KEY} is damaged; remove the {STATE_KEY!r} key and run the task "
                           "again (the lab's objects are still recognised from its state directory)"])
    elif not made_here(value, state.path.parent):
        raise ConfigError([f"lab.state_dir: {state.path} was copied or moved from another state directory or host "
                           f"(its {STATE_KEY} was made for another path): run the task where the lab was made, or "
                           f"remove the {STATE_KEY!r} key to start a new lab here (the other lab's objects are then "
                           "left alone)"])
    return value


def ensure_id(cfg) -> str:
    """The lab's id, from its state directory (marked as the lab's and the id recorded if new)."""
    statedir.mark(cfg.state_dir, cfg)
    return lab_id(State(layout.Layout(cfg.state_dir).state))


def recorded_id(state_dir: Path) -> Optional[str]:
    """The id in ``state_dir``'s ``state.json``, or None (no state, or one that cannot be read)."""
    try:
        value = json.loads(layout.Layout(state_dir).state.read_text()).get(STATE_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    # A state copied from another directory or host names another lab's objects: not this one's.
    return value if valid(value) and made_here(value, state_dir) else None


class Owner:
    """Decides whether an id found on a libvirt object is this lab's (see the module docstring)."""

    def __init__(self, state_dir: Path, lab_id: Optional[str] = None):
        self.state_dir = Path(state_dir)
        self.id = lab_id if lab_id is not None else recorded_id(self.state_dir)

    def owns(self, object_id: Optional[str]) -> bool:
        """True when ``object_id`` is the state's id or was made for this state directory."""
        if not valid(object_id):
            return False
        return object_id == self.id or made_here(object_id, self.state_dir)


def description(name: str, lab_id: Optional[str]) -> str:
    """The libvirt description of the lab's machines (plain ASCII: no XML quoting needed)."""
    label = name if re.fullmatch(r"[A-Za-z0-9-]{1,63}", name or "") else "?"
    return f"dslab lab {label}; {DESCRIPTION_TAG}{lab_id}" if lab_id else f"dslab lab {label}"


def id_in(text: Optional[str]) -> Optional[str]:
    """The lab id named in a machine's description, or None."""
    found = _IN_DESCRIPTION.search(text or "")
    return found.group(1) if found else None
