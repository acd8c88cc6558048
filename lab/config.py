"""The lab configuration: embedded defaults, loading, and validation.

Settings come from invoke's configuration under ``lab`` (``invoke.yaml`` beside
``tasks.py``, ``-f FILE``, ``INVOKE_LAB_*`` variables). :func:`load` fills what the user
did not set from :data:`DEFAULTS` and the profile, then validates the result and raises
one :class:`~lab.errors.ConfigError` listing *every* problem, one line each.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import yaml

from .errors import ConfigError
from .profiles import DEFAULT_PROFILE, PROFILES, Profile

#: Embedded defaults. ``None`` means "the profile decides" (or "derived", for nodes).
DEFAULTS: dict = {
    "name": "dslab",
    "profile": DEFAULT_PROFILE,
    "box": None,
    "box_url": None,
    "libvirt_uri": "qemu:///system",
    "libvirt_driver": "kvm",
    "storage_pool": "default",
    "memory_mb": 2048,
    "cpus": 2,
    "state_dir": ".lab",
    "domain": "dslab.internal",
    "workers": 2,
    "nodes": None,
    "network_ipv4": "192.168.200.0/24",
    "network_ipv6": "fd00:db1::/64",
    "dhcp_ipv4_range": "192.168.200.100-192.168.200.139",
    "dhcp_ipv6_range": "fd00:db1::1000-fd00:db1::10ff",
    "pod_subnets": "10.244.0.0/16,fd00:2::/48",
    "service_subnets": "10.96.0.0/16,fd00:3::/112",
    "docker_ipv6_cidr": "fd00:1::/64",
    "node_cidr_mask_ipv4": 24,
    "node_cidr_mask_ipv6": 64,
    "metallb_ipv4_range": "192.168.200.240-192.168.200.250",
    "metallb_ipv6_range": "fd00:db1::240-fd00:db1::250",
    "external_ipv4": "192.168.200.145",
    "external_ipv6": "fd00:db1::120",
    "runtime": None,
    "kube_proxy_mode": "ipvs",
    "ready_timeout": 900,
}

#: One line of help per setting, used by the README and ``invoke lab.config``.
HELP: dict = {
    "name": "lab name; prefix of every libvirt object the lab creates (DNS label, max 20 chars)",
    "profile": "versions to install: 'current' or 'seed-2020'",
    "box": "Vagrant box name (default: the profile's)",
    "box_url": "URL of the box where it is not on Vagrant Cloud (default: the profile's)",
    "libvirt_uri": "libvirt connection URI, e.g. qemu:///system or qemu+ssh://user@host/system",
    "libvirt_driver": "'kvm' (hardware virtualisation) or 'qemu' (software emulation)",
    "storage_pool": "libvirt storage pool for the VM disks",
    "memory_mb": "memory per node, MiB",
    "cpus": "vCPUs per node",
    "state_dir": "where rendered files, the Vagrant project, logs and the kubeconfig live",
    "domain": "DNS domain of the node names",
    "workers": "number of worker nodes (when 'nodes' is not given)",
    "nodes": "explicit node list: [{name, role: control-plane|worker, ipv4, ipv6}]",
    "network_ipv4": "IPv4 CIDR of the node network",
    "network_ipv6": "IPv6 CIDR of the node network (unique-local /64)",
    "dhcp_ipv4_range": "IPv4 DHCP range of the node network, 'first-last'",
    "dhcp_ipv6_range": "IPv6 DHCP range of the node network, 'first-last'",
    "pod_subnets": "pod CIDRs, '<ipv4>,<ipv6>'",
    "service_subnets": "service CIDRs, '<ipv4>,<ipv6>'",
    "docker_ipv6_cidr": "Docker's fixed-cidr-v6 on every node",
    "node_cidr_mask_ipv4": "size of each node's IPv4 pod block (prefix length)",
    "node_cidr_mask_ipv6": "size of each node's IPv6 pod block (prefix length)",
    "metallb_ipv4_range": "MetalLB IPv4 pool, 'first-last', inside the node network",
    "metallb_ipv6_range": "MetalLB IPv6 pool, 'first-last', inside the node network",
    "external_ipv4": "externalIP of the IPv4 nginx Service, inside the node network",
    "external_ipv6": "externalIP of the IPv6 nginx Service, inside the node network",
    "runtime": "container runtime: 'docker' (with cri-dockerd on current) or 'containerd'",
    "kube_proxy_mode": "kube-proxy mode: 'ipvs' (the recipe's) or 'nftables' (current only)",
    "ready_timeout": "seconds to wait for nodes and workloads to become ready",
}

ROLES = ("control-plane", "worker")
DRIVERS = ("kvm", "qemu")
PROXY_MODES = ("ipvs", "nftables")
NAME_MAX = 20
MEMORY_MIN_MB = 512
CPUS_MAX = 64
#: 20 workers (21 nodes): the node MAC's last octet is the node's index (at most 255), and
#: the derived plan puts workers at .21 up; 20 of them end at .40, well clear of the default
#: DHCP range (.100) and inside the smallest accepted network for explicit node lists.
WORKERS_MAX = 20
NODES_MAX = WORKERS_MAX + 1
CONTROL_PLANE_HOST = 11
FIRST_WORKER_HOST = 21
#: Every value is checked with a full match (``re.fullmatch``): ``$`` would accept a
#: trailing newline.
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DNS_NAME = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DNS_NAME_MAX = 253
#: libvirt connection URIs: qemu over the local socket or a transport that runs no command
#: of the user's choosing (``ext`` runs ``?command=``; ``ssh``'s ``netcat``/``proxy``
#: parameters and a shell-active host or user name reach a shell through vagrant-libvirt's
#: ssh ProxyCommand). Host names, user names and query values are restricted to plain
#: characters; the test driver takes only an absolute path.
_URI_HOST = r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
LIBVIRT_URI = re.compile(
    r"qemu(\+(ssh|libssh|libssh2|tls|tcp|unix))?://"
    r"(([A-Za-z0-9._-]{1,64})@)?(" + _URI_HOST + r"(:[0-9]{1,5})?)?"
    r"/(system|session)"
    r"(\?(keyfile|known_hosts|known_hosts_verify|no_verify|no_tty|pkipath|sshauth|mode)=[A-Za-z0-9._/~,+-]*"
    r"(&(keyfile|known_hosts|known_hosts_verify|no_verify|no_tty|pkipath|sshauth|mode)=[A-Za-z0-9._/~,+-]*)*)?"
    r"|test:///[A-Za-z0-9._/-]*"
)
#: Vagrant box names: ``name`` or ``org/name``.
BOX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})?")
#: Box URLs: https, or an explicit local ``file:///`` path; only URL characters (RFC 3986),
#: so no space, quote, backtick, brace or backslash.
BOX_URL = re.compile(r"(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?|file://)/[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")
#: libvirt storage pool names the lab accepts.
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
#: Longest text value, and longest list, accepted for any setting.
TEXT_MAX = 4096
LIST_MAX = 1000
#: Settings whose value is text (``None`` allowed only where the default is ``None``).
TEXT_SETTINGS = ("name", "profile", "box", "box_url", "libvirt_uri", "libvirt_driver", "storage_pool",
                 "state_dir", "domain", "network_ipv4", "network_ipv6", "dhcp_ipv4_range", "dhcp_ipv6_range",
                 "docker_ipv6_cidr", "metallb_ipv4_range", "metallb_ipv6_range", "external_ipv4",
                 "external_ipv6", "runtime", "kube_proxy_mode")
#: Settings whose text may hold non-ASCII characters (paths); every other value ends up in
#: Ruby, XML, shell or DNS, where only ASCII belongs.
NON_ASCII_OK = ("state_dir",)
#: Address space no lab address or range may touch, with what to call it.
SPECIAL_NETWORKS = tuple((ipaddress.ip_network(net), what) for net, what in (
    ("0.0.0.0/8", "the unspecified/'this network' range 0.0.0.0/8"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4, broadcast)"),
    ("::/8", "reserved ::/8 (unspecified, loopback, IPv4-mapped or -compatible)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
))

IPNetwork = ipaddress._BaseNetwork  # noqa: SLF001 - the common base of both families
IPAddress = ipaddress._BaseAddress  # noqa: SLF001


@dataclass(frozen=True)
class Node:
    """One planned machine of the lab."""

    name: str
    role: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address
    mac: str

    @property
    def is_control_plane(self) -> bool:
        """True for the control-plane node."""
        return self.role == "control-plane"

    def fqdn(self, domain: str) -> str:
        """``name.domain``."""
        return f"{self.name}.{domain}"


@dataclass(frozen=True)
class AddressRange:
    """An inclusive range of addresses of one family, written ``first-last``."""

    first: Any
    last: Any

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.first.version

    def __contains__(self, address) -> bool:
        return address.version == self.version and self.first <= address <= self.last

    def overlaps(self, other: "AddressRange") -> bool:
        """True when both ranges share an address."""
        return self.version == other.version and self.first <= other.last and other.first <= self.last

    def within(self, network) -> bool:
        """True when the whole range lies inside ``network``."""
        return self.first in network and self.last in network

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class LabConfig:
    """A loaded, defaulted and validated lab configuration."""

    name: str
    profile: Profile
    box: str
    box_url: Optional[str]
    libvirt_uri: str
    libvirt_driver: str
    storage_pool: str
    memory_mb: int
    cpus: int
    state_dir: Path
    domain: str
    nodes: Tuple[Node, ...]
    network_ipv4: ipaddress.IPv4Network
    network_ipv6: ipaddress.IPv6Network
    dhcp_ipv4_range: AddressRange
    dhcp_ipv6_range: AddressRange
    pod_subnets: Tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]
    service_subnets: Tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]
    docker_ipv6_cidr: ipaddress.IPv6Network
    node_cidr_mask_ipv4: int
    node_cidr_mask_ipv6: int
    metallb_ipv4_range: AddressRange
    metallb_ipv6_range: AddressRange
    external_ipv4: ipaddress.IPv4Address
    external_ipv6: ipaddress.IPv6Address
    runtime: str
    kube_proxy_mode: str
    ready_timeout: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def control_plane(self) -> Node:
        """The control-plane node."""
        return next(n for n in self.nodes if n.is_control_plane)

    @property
    def workers(self) -> Tuple[Node, ...]:
        """The worker nodes, in order."""
        return tuple(n for n in self.nodes if not n.is_control_plane)

    @property
    def gateway_ipv4(self) -> ipaddress.IPv4Address:
        """The host's IPv4 address on the node network (its first address)."""
        return self.network_ipv4.network_address + 1

    @property
    def gateway_ipv6(self) -> ipaddress.IPv6Address:
        """The host's IPv6 address on the node network (its first address)."""
        return self.network_ipv6.network_address + 1

    @property
    def network_name(self) -> str:
        """Name of the lab's libvirt network: the lab prefix, like its domains and volumes."""
        return f"{self.domain_prefix}net"

    @property
    def bridge_name(self) -> str:
        """Linux bridge of the lab network: unique per lab name, 13 characters."""
        return "dslab" + hashlib.sha256(self.name.encode()).hexdigest()[:8]

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def domain_prefix(self) -> str:
        """Prefix of every libvirt domain and volume of the lab."""
        return f"{self.name}_"

    def domain_name(self, node: Node) -> str:
        """libvirt domain name of ``node`` (lab prefix + node name)."""
        return f"{self.domain_prefix}{node.name}"


# --------------------------------------------------------------------------- loading


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


def load(user: Optional[Mapping] = None, **overrides) -> LabConfig:
    """Load, default and validate the lab configuration.

    ``user`` is invoke's ``c.config.lab`` (or any mapping); ``overrides`` are task flags.
    Raises :class:`ConfigError` with every problem found.
    """
    return validate(merged_settings(user, **overrides))


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def shown(value) -> str:
    """``value`` for a message: one short line, whatever it is (a 5000-digit number included)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"


def key_text(key) -> str:
    """A setting's name for a message: printable ASCII as is, anything else quoted."""
    text = key if isinstance(key, str) else shown(key)
    if not (text.isascii() and text.isprintable()) or len(text) > 60:
        text = shown(text)
    return text


class _Problems(list):
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


def _text_problem(value, non_ascii_ok=False):
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


def _check_texts(problems, raw):
    """Every string anywhere in the settings: bounded, no control characters, ASCII."""
    def walk(key, value, non_ascii_ok, depth):
        if depth > 4:
            problems.refuse(key, "is nested too deeply; give a single value or a list of {name, role, ipv4, ipv6}")
        elif isinstance(value, str):
            reason = _text_problem(value, non_ascii_ok)
            if reason:
                problems.refuse(key, reason)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(key, v, non_ascii_ok, depth + 1)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(key, v, non_ascii_ok, depth + 1)
            if len(value) > LIST_MAX:
                problems.refuse(key, f"is a list of {len(value)} items; no setting takes more than {LIST_MAX}")

    for key, value in raw.items():
        if isinstance(key, str):
            walk(key, value, key in NON_ASCII_OK, 0)
    for key in TEXT_SETTINGS:
        value = raw.get(key)
        if value is None and DEFAULTS.get(key) is None:
            continue
        if key in ("box", "box_url") and value is None:
            continue
        if not isinstance(value, str):
            problems.refuse(key, f"{shown(value)} is not text; give a single value like {DEFAULTS.get(key) or 'a string'!r}")


def _int(problems, raw, key, low, high):
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


def _special(value) -> Optional[str]:
    """What special address space the address or network ``value`` touches, or None."""
    net = ipaddress.ip_network(value) if isinstance(value, IPAddress) else value
    for special, what in SPECIAL_NETWORKS:
        if special.version == net.version and special.overlaps(net):
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
    special = _special(parsed)
    if special:
        problems.add(key, f"{parsed} is in {special} address space; use an address like {hint}")
        return None
    return parsed


def _network(problems, raw, key, version, hint):
    return _typed(problems, raw, key, version, hint, lambda v: ipaddress.ip_network(v, strict=True), "CIDR")


def _address(problems, raw, key, version, hint):
    return _typed(problems, raw, key, version, hint, ipaddress.ip_address, "IP address")


def _range(problems, raw, key, version, hint):
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
        special = _special(end)
        if special:
            problems.add(key, f"{end} is in {special} address space; use a range like {hint}")
            return None
    return AddressRange(first, last)


def _pair(problems, raw, key, hint):
    """A dual-stack pair ``<v4>,<v6>`` (either order in input; returned v4 first)."""
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
        special = _special(net)
        if special:
            problems.add(key, f"{net} overlaps {special} address space; write the pair like {hint}")
            return None
    return tuple(sorted(nets, key=lambda n: n.version))


def _mac(lab: str, index: int) -> str:
    """A stable locally administered MAC per lab and node (QEMU's 52:54:00 prefix)."""
    digest = hashlib.sha256(lab.encode()).digest()
    return "52:54:00:%02x:%02x:%02x" % (digest[0], digest[1], index)


def _nodes(problems, raw, net4, net6, workers):
    """Build the node list from ``nodes`` or, when absent, from ``workers``."""
    lab = str(raw.get("name"))
    given = raw.get("nodes")
    if isinstance(given, str):
        try:
            given = load_yaml(given, "lab.nodes")
        except ConfigError as exc:
            problems.add("nodes", f"is not valid YAML/JSON ({exc.problems[0]}); give a list of {{name, role, ipv4, ipv6}}")
            return ()
    if given is None:
        if net4 is None or net6 is None or workers is None:
            return ()
        planned = [("k8s-master01", "control-plane", CONTROL_PLANE_HOST)]
        planned += [(f"k8s-worker{i:02d}", "worker", FIRST_WORKER_HOST + i - 1) for i in range(1, workers + 1)]
        return tuple(
            Node(name, role, net4.network_address + host, net6.network_address + int(str(host), 16), _mac(lab, i))
            for i, (name, role, host) in enumerate(planned, start=1)
        )
    if not isinstance(given, list) or not given:
        problems.add("nodes", "must be a non-empty list of {name, role, ipv4, ipv6}")
        return ()
    if len(given) > NODES_MAX:
        problems.add("nodes", f"has {len(given)} nodes; the lab takes at most {NODES_MAX} (one control plane, "
                              f"{WORKERS_MAX} workers)")
        return ()
    nodes = []
    for i, entry in enumerate(given, start=1):
        key = f"nodes[{i - 1}]"
        if not isinstance(entry, Mapping):
            problems.add(key, f"{shown(entry)} is not a mapping; give name, role, ipv4 and ipv6")
            continue
        unknown = sorted(key_text(k) for k in set(entry) - {"name", "role", "ipv4", "ipv6"})
        if unknown:
            problems.add(key, f"unknown field(s) {', '.join(unknown)}; allowed: name, role, ipv4, ipv6")
        missing = [k for k in ("name", "ipv4", "ipv6") if entry.get(k) is None]
        if missing:
            problems.add(key, f"is missing {', '.join(missing)}; give name, role, ipv4 and ipv6")
            continue
        name = entry.get("name")
        role = entry.get("role", "worker")
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            problems.add(f"{key}.name", f"{shown(name)} is not a DNS label; use 1-63 lowercase letters, digits and '-'")
        if not isinstance(role, str) or role not in ROLES:
            problems.add(f"{key}.role", f"{shown(role)} is unknown; use one of {', '.join(ROLES)}")
        v4 = _address(problems, {key + ".ipv4": entry.get("ipv4")}, key + ".ipv4", 4, "192.168.200.11")
        v6 = _address(problems, {key + ".ipv6": entry.get("ipv6")}, key + ".ipv6", 6, "fd00:db1::11")
        if v4 is not None and v6 is not None and isinstance(name, str) and isinstance(role, str):
            nodes.append(Node(name, role, v4, v6, _mac(lab, i)))
    roles = [n.role for n in nodes]
    if nodes and roles.count("control-plane") != 1:
        problems.add("nodes", f"needs exactly one node with role control-plane (found {roles.count('control-plane')})")
    if nodes and "worker" not in roles:
        problems.add("nodes", "needs at least one node with role worker")
    return tuple(nodes)


def _reserved(net, address):
    """True for the network, gateway (first host) or broadcast address of ``net``."""
    specials = {net.network_address, net.network_address + 1}
    if net.version == 4:
        specials.add(net.broadcast_address)
    return address in specials


def validate(raw: Mapping[str, Any]) -> LabConfig:
    """Validate merged settings and return a :class:`LabConfig`, or raise with every problem."""
    problems = _Problems()
    for key in sorted(set(raw) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(str(key).replace("-", "_"), list(DEFAULTS), n=1, cutoff=0.75)
        hint = f"did you mean lab.{close[0]}?" if close else "remove it; `invoke lab.config` lists the settings"
        problems.add(key, f"unknown setting; {hint}")
    raw = {k: v for k, v in raw.items() if k in DEFAULTS}
    _check_texts(problems, raw)

    name = raw.get("name")
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name) or len(name) > NAME_MAX:
        problems.add("name", f"{shown(name)} cannot prefix libvirt and DNS names; use 1-{NAME_MAX} lowercase letters, digits or '-'")

    profile = PROFILES.get(raw.get("profile")) if isinstance(raw.get("profile"), str) else None
    if profile is None:
        problems.add("profile", f"{shown(raw.get('profile'))} is unknown; use one of {', '.join(PROFILES)}")

    driver = raw.get("libvirt_driver")
    if driver not in DRIVERS:
        problems.add("libvirt_driver", f"{shown(driver)} is unknown; use 'kvm' or 'qemu' (software emulation)")
    uri = raw.get("libvirt_uri")
    if not isinstance(uri, str) or not LIBVIRT_URI.fullmatch(uri):
        problems.add("libvirt_uri", f"{shown(uri)} is not a libvirt URI the lab accepts; use qemu:///system or "
                                    "qemu+ssh://user@host/system (transports ssh, libssh, libssh2, tls, tcp, unix; "
                                    "no command-running parameters)")
    pool = raw.get("storage_pool")
    if not isinstance(pool, str) or not POOL_NAME.fullmatch(pool.strip()):
        problems.add("storage_pool", f"{shown(pool)} is not a storage pool name; use letters, digits and . _ + - "
                                     "(at most 64), like 'default'")
    state_dir = raw.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir.strip():
        problems.add("state_dir", "must be a non-empty path")
    else:
        reason = dir_problem(_state_dir(state_dir))
        if reason:
            problems.add("state_dir", f"{shown(state_dir)} {reason}")
    box = raw.get("box")
    if box is not None and (not isinstance(box, str) or not BOX_NAME.fullmatch(box)):
        problems.add("box", f"{shown(box)} is not a Vagrant box name; use 'name' or 'org/name' (letters, digits, . _ -)")
    box_url = raw.get("box_url")
    if box_url is not None and (not isinstance(box_url, str) or not BOX_URL.fullmatch(box_url)):
        problems.add("box_url", f"{shown(box_url)} is not an https:// URL (or an explicit local file:///path) of "
                                "URL characters; use https://")

    domain = raw.get("domain")
    if not isinstance(domain, str) or not DNS_NAME.fullmatch(domain) or len(domain) > DNS_NAME_MAX:
        problems.add("domain", f"{shown(domain)} is not a DNS name; use lowercase labels of 1-63 characters "
                               f"separated by dots, at most {DNS_NAME_MAX} in all, like dslab.internal")

    memory = _int(problems, raw, "memory_mb", MEMORY_MIN_MB, 1024 * 1024)
    cpus = _int(problems, raw, "cpus", 1, CPUS_MAX)
    workers = _int(problems, raw, "workers", 1, WORKERS_MAX)
    mask4 = _int(problems, raw, "node_cidr_mask_ipv4", 8, 30)
    mask6 = _int(problems, raw, "node_cidr_mask_ipv6", 64, 124)
    timeout = _int(problems, raw, "ready_timeout", 30, 24 * 3600)

    net4 = _network(problems, raw, "network_ipv4", 4, "192.168.200.0/24")
    net6 = _network(problems, raw, "network_ipv6", 6, "fd00:db1::/64")
    if net4 is not None and net4.prefixlen > 28:
        problems.add("network_ipv4", f"{net4} is too small for the nodes and pools; use a /24 like 192.168.200.0/24")
    if net6 is not None and net6.prefixlen != 64:
        problems.add("network_ipv6", f"{net6} must be a /64 (SLAAC and DHCPv6 need it), like fd00:db1::/64")
    if net6 is not None and not (net6.subnet_of(ipaddress.ip_network("fc00::/7"))):
        problems.add("network_ipv6", f"{net6} is not unique-local space; use an fd00::/8 /64 like fd00:db1::/64")
    dhcp4 = _range(problems, raw, "dhcp_ipv4_range", 4, "192.168.200.100-192.168.200.139")
    dhcp6 = _range(problems, raw, "dhcp_ipv6_range", 6, "fd00:db1::1000-fd00:db1::10ff")
    pods = _pair(problems, raw, "pod_subnets", "10.244.0.0/16,fd00:2::/48")
    services = _pair(problems, raw, "service_subnets", "10.96.0.0/16,fd00:3::/112")
    docker6 = _network(problems, raw, "docker_ipv6_cidr", 6, "fd00:1::/64")
    lb4 = _range(problems, raw, "metallb_ipv4_range", 4, "192.168.200.240-192.168.200.250")
    lb6 = _range(problems, raw, "metallb_ipv6_range", 6, "fd00:db1::240-fd00:db1::250")
    ext4 = _address(problems, raw, "external_ipv4", 4, "192.168.200.145")
    ext6 = _address(problems, raw, "external_ipv6", 6, "fd00:db1::120")

    runtime = raw.get("runtime")
    if profile is not None:
        runtime = runtime or profile.runtimes[0]
        if runtime not in profile.runtimes:
            problems.add("runtime", f"{shown(runtime)} is not available on profile {profile.name}; use one of {', '.join(profile.runtimes)}")
    proxy = raw.get("kube_proxy_mode")
    if proxy not in PROXY_MODES:
        problems.add("kube_proxy_mode", f"{shown(proxy)} is unknown; use 'ipvs' or 'nftables'")
    elif proxy == "nftables" and profile is not None and profile.name != "current":
        problems.add("kube_proxy_mode", f"nftables needs Kubernetes 1.31+; profile {profile.name} has only 'ipvs'")

    nodes = _nodes(problems, raw, net4, net6, workers)
    _check_nodes(problems, nodes, net4, net6, dhcp4, dhcp6)
    _check_ranges(problems, net4, net6, dhcp4, dhcp6, pods, services, docker6, lb4, lb6, ext4, ext6, nodes)
    if profile is not None and services is not None:
        for net in services:
            # kube-apiserver refuses a service range of more host bits than this (primary and
            # secondary alike); kubeadm gives cluster DNS the range's 10th address.
            bits = net.max_prefixlen - net.prefixlen
            example = "10.96.0.0/16" if net.version == 4 else "fd00:3::/112"
            if bits > profile.max_service_ipv6_bits:
                problems.add("service_subnets", f"the IPv{net.version} range {net} is too large for Kubernetes "
                             f"{profile.kubernetes_version} (at most /{net.max_prefixlen - profile.max_service_ipv6_bits}); "
                             f"use e.g. {example}")
            elif net.num_addresses < 16:
                problems.add("service_subnets", f"the IPv{net.version} range {net} is too small for the API server's "
                             f"address and kubeadm's DNS address (its 10th); use at least /{net.max_prefixlen - 4}, "
                             f"e.g. {example}")
    if domain is not None and isinstance(domain, str):
        for node in nodes:
            if len(node.fqdn(domain)) > DNS_NAME_MAX:
                problems.add("domain", f"{node.fqdn(domain)[:40]}... is longer than {DNS_NAME_MAX} characters; "
                                       "use a shorter domain or node names")
                break
    if pods is not None and mask4 is not None and mask6 is not None and nodes:
        for net, mask, key in ((pods[0], mask4, "node_cidr_mask_ipv4"), (pods[1], mask6, "node_cidr_mask_ipv6")):
            if mask < net.prefixlen:
                problems.add(key, f"/{mask} is larger than the pod subnet {net}; use a longer prefix than /{net.prefixlen}")
            elif mask - net.prefixlen > 16:
                problems.add(key, f"/{mask} splits {net} into more than 2^16 blocks; use at most /{net.prefixlen + 16}")
            elif 2 ** (mask - net.prefixlen) < len(nodes):
                problems.add("pod_subnets", f"{net} has room for {2 ** (mask - net.prefixlen)} blocks of /{mask}, fewer than the {len(nodes)} nodes; use a larger pod subnet")

    if problems:
        raise ConfigError(problems)
    return LabConfig(
        name=name,
        profile=profile,
        box=raw.get("box") or profile.box,
        box_url=raw.get("box_url") if raw.get("box") else (raw.get("box_url") or profile.box_url),
        libvirt_uri=uri,
        libvirt_driver=driver,
        storage_pool=raw["storage_pool"].strip(),
        memory_mb=memory,
        cpus=cpus,
        state_dir=_state_dir(raw["state_dir"]),
        domain=domain,
        nodes=nodes,
        network_ipv4=net4,
        network_ipv6=net6,
        dhcp_ipv4_range=dhcp4,
        dhcp_ipv6_range=dhcp6,
        pod_subnets=pods,
        service_subnets=services,
        docker_ipv6_cidr=docker6,
        node_cidr_mask_ipv4=mask4,
        node_cidr_mask_ipv6=mask6,
        metallb_ipv4_range=lb4,
        metallb_ipv6_range=lb6,
        external_ipv4=ext4,
        external_ipv6=ext6,
        runtime=runtime,
        kube_proxy_mode=proxy,
        ready_timeout=timeout,
        raw=dict(raw),
    )


#: The project's top directory (where tasks.py lives): relative state directories are under it.
PROJECT_DIR = Path(__file__).resolve().parent.parent


def _state_dir(value: str) -> Path:
    """``value`` as an absolute path; a relative one is taken from the project directory,
    so every task finds the same lab wherever it is run from."""
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else PROJECT_DIR / path


def dir_problem(path: Path) -> Optional[str]:
    """Why the lab could not make ``path`` its directory (a file, under a file, not
    creatable), or None. Looks only; creates nothing."""
    path = Path(os.path.abspath(path))
    try:
        if path.exists() and not path.is_dir():
            return "is a file, not a directory; give a directory path"
        probe = path
        while not probe.exists():
            if probe.is_symlink():
                return f"goes through the dangling symbolic link {probe}; give a directory path"
            probe = probe.parent
    except OSError as exc:  # a name longer than the filesystem allows, a path it cannot resolve
        return f"cannot be created ({exc.strerror}); give a shorter directory path"
    if not probe.is_dir():
        return f"lies under {probe}, which is a file; give a directory path"
    if probe != path and not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot be created: {probe} is not writable; give a directory you can write"
    if probe == path and not os.access(path, os.W_OK | os.X_OK):
        return "is not writable; give a directory you can write"
    return None


# --------------------------------------------------------------------------- YAML


#: Bounds on a YAML document of settings: the nodes it expands to (aliases counted each time
#: they are used) and its nesting depth.
YAML_MAX_NODES = 100_000
YAML_MAX_DEPTH = 32


class _YamlRefused(yaml.YAMLError):
    """A document the lab does not read (tag, recursive or exponential aliases)."""

    def __init__(self, message, mark=None):
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


_YAML_INT, _YAML_FLOAT, _YAML_BOOL = (f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool"))


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing explicit tags, duplicate keys and alias structures that
    are recursive or expand past :data:`YAML_MAX_NODES` nodes; checked on the composed node
    graph before any Python object is built, so a billion-laughs document is refused in
    milliseconds.

    Plain numbers and booleans are read as YAML 1.2's core schema reads them, not as YAML
    1.1 (PyYAML's default): an integer is decimal digits without a leading zero, a boolean is
    true or false. ``0x2``, ``0b11``, ``0o7``, ``1_0``, ``1:00`` (base 60), ``010`` (octal in
    1.1), ``yes``, ``no``, ``on`` and ``off`` are text, which a number setting refuses."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_YAML_INT, _YAML_FLOAT, _YAML_BOOL)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = {}
        for key, _value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            if (key.tag, key.value) in seen:
                raise _YamlRefused(f"the key {shown(key.value)} is given twice in one mapping (first on line "
                                   f"{seen[key.tag, key.value] + 1})", key.start_mark)
            seen[key.tag, key.value] = key.start_mark.line
        return node

    def compose_node(self, parent, index):
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if not isinstance(event, yaml.AliasEvent) and tag not in (None, "!"):
            raise _YamlRefused(f"the YAML tag {tag} is not accepted", event.start_mark)
        return super().compose_node(parent, index)

    def construct_document(self, node):
        _expanded_size(node)
        return super().construct_document(node)


BoundedLoader.add_implicit_resolver(_YAML_BOOL, re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z"), list("tTfF"))
BoundedLoader.add_implicit_resolver(_YAML_INT, re.compile(r"-?(?:0|[1-9][0-9]*)\Z"), list("-0123456789"))
BoundedLoader.add_implicit_resolver(
    _YAML_FLOAT, re.compile(
        r"(?:-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|-?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"),
    list("-0123456789."))


def _expanded_size(root) -> None:
    """Raise :class:`_YamlRefused` when ``root`` is recursive, too deep or expands too far."""
    sizes, active = {}, set()

    def size(node, depth):
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _YamlRefused("a recursive alias (an anchor used inside itself) is not accepted", node.start_mark)
        if depth > YAML_MAX_DEPTH:
            raise _YamlRefused(f"nesting deeper than {YAML_MAX_DEPTH} levels is not accepted", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
        active.discard(key)
        if total > YAML_MAX_NODES:
            raise _YamlRefused(f"the document expands to more than {YAML_MAX_NODES} values (aliases counted "
                               "each time they are used)", node.start_mark)
        sizes[key] = total
        return total

    size(root, 0)


def load_yaml(stream, source: str):
    """The YAML document in ``stream`` (text or a file), loaded with :class:`BoundedLoader`.

    Any failure is one :class:`ConfigError` line naming ``source`` and the line."""
    try:
        return yaml.load(stream, Loader=BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if "\t" in what or "'\\t'" in what:
            what += " (indent with spaces, not tabs)"
        raise ConfigError([f"lab: {source}{where}: {what}; fix the YAML"]) from None
    except (ValueError, RecursionError):  # e.g. an integer of more than 4300 digits
        raise ConfigError([f"lab: {source}: a value cannot be read (a number of thousands of digits?); "
                           "fix the YAML"]) from None


def _check_nodes(problems, nodes, net4, net6, dhcp4, dhcp6):
    seen_names, seen_v4, seen_v6 = {}, {}, {}
    for node in nodes:
        for seen, value, what in ((seen_names, node.name, "name"), (seen_v4, node.ipv4, "ipv4"), (seen_v6, node.ipv6, "ipv6")):
            if value in seen:
                problems.add("nodes", f"{node.name} and {seen[value]} share the {what} {value}; give each node its own")
            else:
                seen[value] = node.name
        for addr, net, dhcp, key in ((node.ipv4, net4, dhcp4, "network_ipv4"), (node.ipv6, net6, dhcp6, "network_ipv6")):
            if net is None:
                continue
            if addr not in net:
                problems.add("nodes", f"{node.name}'s address {addr} is outside {key} {net}; pick one inside it")
            elif _reserved(net, addr):
                problems.add("nodes", f"{node.name}'s address {addr} is the network, gateway or broadcast address of {net}; pick another")
            elif dhcp is not None and addr in dhcp:
                problems.add("nodes", f"{node.name}'s address {addr} is inside the DHCP range {dhcp}; pick one outside it")


def _check_ranges(problems, net4, net6, dhcp4, dhcp6, pods, services, docker6, lb4, lb6, ext4, ext6, nodes):
    # Every CIDR the lab uses must be disjoint from every other.
    cidrs = []
    for key, value in (("network_ipv4", net4), ("network_ipv6", net6), ("docker_ipv6_cidr", docker6)):
        if value is not None:
            cidrs.append((key, value))
    for key, pair in (("pod_subnets", pods), ("service_subnets", services)):
        if pair is not None:
            cidrs.extend((key, net) for net in pair)
    for i, (key_a, a) in enumerate(cidrs):
        for key_b, b in cidrs[i + 1:]:
            if a.version == b.version and a.overlaps(b):
                problems.add(key_b, f"{b} overlaps lab.{key_a} {a}; choose ranges that do not overlap")

    # Ranges and single addresses inside the node network.
    spans = []
    for key, rng, net in (("dhcp_ipv4_range", dhcp4, net4), ("dhcp_ipv6_range", dhcp6, net6),
                          ("metallb_ipv4_range", lb4, net4), ("metallb_ipv6_range", lb6, net6)):
        if rng is None or net is None:
            continue
        if not rng.within(net):
            problems.add(key, f"{rng} is not inside the node network {net}; pick addresses inside it")
        elif _reserved(net, rng.first) or _reserved(net, rng.last) or rng.first <= net.network_address + 1 <= rng.last:
            problems.add(key, f"{rng} includes the network or gateway address of {net}; start after {net.network_address + 1}")
        else:
            spans.append((key, rng))
    for key, addr, net in (("external_ipv4", ext4, net4), ("external_ipv6", ext6, net6)):
        if addr is None or net is None:
            continue
        if addr not in net:
            problems.add(key, f"{addr} is outside the node network {net}; pick an address inside it")
        elif _reserved(net, addr):
            problems.add(key, f"{addr} is the network or gateway address of {net}; pick another")
        else:
            spans.append((key, AddressRange(addr, addr)))
    for i, (key_a, a) in enumerate(spans):
        for key_b, b in spans[i + 1:]:
            if a.overlaps(b):
                problems.add(key_b, f"{b} overlaps lab.{key_a} {a}; choose addresses that do not overlap")
    for key, rng in spans:
        if key.startswith("dhcp"):
            continue
        for node in nodes:
            for addr in (node.ipv4, node.ipv6):
                if addr in rng:
                    problems.add(key, f"{rng} contains {node.name}'s address {addr}; keep node addresses out of it")


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
