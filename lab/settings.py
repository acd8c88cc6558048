"""What a lab setting is: the embedded defaults, the limits and patterns every value must
meet, and the typed configuration the rest of the lab reads (:class:`LabConfig`).

Nothing here reads a source or decides a value: :mod:`lab.defaults` fills what the user
did not set, :mod:`lab.validate` checks the result and builds the :class:`LabConfig`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from .profiles import DEFAULT_PROFILE, Profile

#: Embedded defaults. ``None`` means "filled by :mod:`lab.defaults`" (from the profile, or
#: derived, for nodes).
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
    "cache_dir": None,
    "offline": False,
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
                 "external_ipv6", "runtime", "kube_proxy_mode", "cache_dir")
#: Settings whose text may hold non-ASCII characters (paths); every other value ends up in
#: Ruby, XML, shell or DNS, where only ASCII belongs.
NON_ASCII_OK = ("state_dir", "cache_dir")
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
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    offline: bool = False
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


def default_cache_dir(environ=os.environ) -> Path:
    """Where the host's cache is when ``lab.cache_dir`` is not set: ``$XDG_CACHE_HOME/dslab`` when
    that is an absolute path (the XDG Base Directory Specification), else ``~/.cache/dslab``."""
    base = environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "dslab"


#: The project's top directory (where tasks.py lives): relative state directories are under it.
PROJECT_DIR = Path(__file__).resolve().parent.parent


def state_dir_path(value: str) -> Path:
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
