"""Reading one setting's value: text, whole numbers, addresses, networks, ranges and pairs.

Each reader takes the settings and a key, and returns the value in its Python type, or None
after adding one line naming ``lab.<key>`` and the fix to a :class:`Problems`. Both the
defaults (:mod:`lab.defaults`, which reads what the node plan derives from) and the
validation (:mod:`lab.validate`) read through them, so both read a value alike.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Optional

from .settings import DEFAULTS, SPECIAL_NETWORKS, TEXT_MAX, AddressRange, IPAddress, key_text, shown

#: An example of each setting's form, for the messages: its default.
EXAMPLES = {key: DEFAULTS[key] for key in (
    "network_ipv4", "network_ipv6", "dhcp_ipv4_range", "dhcp_ipv6_range", "pod_subnets", "service_subnets",
    "docker_ipv6_cidr", "metallb_ipv4_range", "metallb_ipv6_range", "external_ipv4", "external_ipv6",
)}


class Problems(list):
    """One line per problem; a setting already reported as unreadable is not reported again."""

    def __init__(self):
        super().__init__()
        self.unreadable = set()

    def add(self, key, message):
        base = str(key).split(".")[0].split("[")[0]
        if key in self.unreadable or base in self.unreadable:
            return
        self.append(f"lab.{key_text(key)}: {message}")

    def refuse(self, key, message):
        """Report ``key`` and keep every later check of it quiet."""
        self.add(key, message)
        self.unreadable.add(key)


def text_problem(value, non_ascii_ok=False):
    """Why the text ``value`` cannot be a setting's value, or None."""
    if len(value) > TEXT_MAX:
        return f"is {len(value)} characters long; no setting takes more than {TEXT_MAX}"
    bad = next((ch for ch in value if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0), None)
    if bad is not None:
        return f"contains the control character {bad!r} (a trailing newline?); remove it"
    if not non_ascii_ok and not value.isascii():
        return f"{shown(value)} contains non-ASCII characters; use ASCII only"
    if not value.isprintable():
        return "contains unprintable characters; remove them"
    return None


def read_int(problems, raw, key, low, high):
    """The whole number ``raw[key]`` (an int, or decimal digits) from ``low`` to ``high``."""
    value = raw.get(key)
    hint = f"set a number from {low} to {high}"
    if isinstance(value, str) and re.fullmatch(r" *-?0[0-9]+ *", value):
        problems.add(key, f"{shown(value)} has a leading zero (octal in YAML 1.1, decimal elsewhere); "
                          f"write the number without it; {hint[0].lower()}{hint[1:]}")
        return None
    if isinstance(value, str) and re.fullmatch(r" *-?[0-9]+ *", value):
        if len(value.strip().lstrip("-")) > 18:
            problems.add(key, f"a number of {len(value.strip())} digits is out of range; {hint}")
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(key, f"{shown(raw.get(key))} is not a whole number; {hint}")
        return None
    if not low <= value <= high:
        problems.add(key, f"{shown(value)} is out of range; {hint}")
        return None
    return value


#: The words a yes/no setting takes from an environment variable or a text value (YAML gives a bool).
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def read_bool(problems, raw, key):
    """The yes/no ``raw[key]``: a bool, or one of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case)."""
    value = raw.get(key)
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    problems.add(key, f"{shown(value)} is not true or false; set true or false")
    return None


def special(value) -> Optional[str]:
    """What special address space the address or network ``value`` touches, or None."""
    net = ipaddress.ip_network(value) if isinstance(value, IPAddress) else value
    for space, what in SPECIAL_NETWORKS:
        if space.version == net.version and space.overlaps(net):
            return what
    return None


def _text(problems, raw, key, hint, what):
    """The text of ``raw[key]`` for an address parser: no scope id, or None (reported)."""
    value = raw.get(key)
    if not isinstance(value, str):
        problems.add(key, f"{shown(value)} is not a valid {what}; write it like {hint}")
        return None
    if "%" in value:
        problems.add(key, f"{shown(value)} has a scope id ('%...'); lab addresses take none: write it like {hint}")
        return None
    return value.strip()


def _typed(problems, raw, key, version, hint, parse, what):
    """``raw[key]`` parsed by ``parse`` (an ipaddress constructor) and of IP ``version``."""
    value = raw.get(key)
    text = _text(problems, raw, key, hint, what)
    if text is None:
        return None
    try:
        parsed = parse(text)
    except ValueError:
        problems.add(key, f"{shown(value)} is not a valid {what}; write it like {hint}")
        return None
    if parsed.version != version:
        problems.add(key, f"{shown(value)} is IPv{parsed.version}, expected an IPv{version} {what} like {hint}")
        return None
    found = special(parsed)
    if found:
        problems.add(key, f"{parsed} is in {found} address space; use an address like {hint}")
        return None
    return parsed


def read_network(problems, raw, key, version, hint=None):
    """The CIDR ``raw[key]`` of IP ``version`` (host bits unset)."""
    hint = hint or EXAMPLES[key]
    return _typed(problems, raw, key, version, hint, lambda v: ipaddress.ip_network(v, strict=True), "CIDR")


def read_address(problems, raw, key, version, hint=None):
    """The address ``raw[key]`` of IP ``version``."""
    hint = hint or EXAMPLES[key]
    return _typed(problems, raw, key, version, hint, ipaddress.ip_address, "IP address")


def read_range(problems, raw, key, version, hint=None):
    """The :class:`AddressRange` ``raw[key]`` (``first-last``) of IP ``version``."""
    hint = hint or EXAMPLES[key]
    value = raw.get(key)
    text = _text(problems, raw, key, hint, "address range")
    if text is None:
        return None
    parts = text.split("-")
    try:
        if len(parts) != 2:
            raise ValueError
        first, last = (ipaddress.ip_address(p.strip()) for p in parts)
    except ValueError:
        problems.add(key, f"{shown(value)} is not an address range; write it as first-last, like {hint}")
        return None
    if first.version != version or last.version != version:
        problems.add(key, f"{shown(value)} must be IPv{version} at both ends, like {hint}")
        return None
    if first > last:
        problems.add(key, f"{shown(value)} ends before it starts; write it as first-last, like {hint}")
        return None
    for end in (first, last):
        found = special(end)
        if found:
            problems.add(key, f"{end} is in {found} address space; use a range like {hint}")
            return None
    return AddressRange(first, last)


def read_pair(problems, raw, key, hint=None):
    """A dual-stack pair ``<v4>,<v6>`` (either order in input; returned v4 first)."""
    hint = hint or EXAMPLES[key]
    value = raw.get(key)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    elif isinstance(value, str):
        parts = value.split(",")
    else:
        problems.add(key, f"{shown(value)} is not a CIDR pair; write it like {hint}")
        return None
    nets = []
    for part in parts:
        if "%" in part:
            problems.add(key, f"{shown(part.strip())} has a scope id ('%...'); write the pair like {hint}")
            return None
        try:
            nets.append(ipaddress.ip_network(part.strip(), strict=True))
        except ValueError:
            problems.add(key, f"{shown(part.strip())} is not a valid CIDR; write the pair like {hint}")
            return None
    families = sorted(n.version for n in nets)
    if families != [4, 6]:
        have = ", ".join(f"IPv{v}" for v in families) or "nothing"
        problems.add(key, f"needs exactly one IPv4 and one IPv6 CIDR (got {have}); write it like {hint}")
        return None
    for net in nets:
        found = special(net)
        if found:
            problems.add(key, f"{net} overlaps {found} address space; write the pair like {hint}")
            return None
    return tuple(sorted(nets, key=lambda n: n.version))


def reserved(net, address):
    """True for the network, gateway (first host) or broadcast address of ``net``."""
    specials = {net.network_address, net.network_address + 1}
    if net.version == 4:
        specials.add(net.broadcast_address)
    return address in specials

