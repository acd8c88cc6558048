"""Pure parsers of the text the checks read: ``ip -o addr``, ``ip route``, ``getent ahosts``,
``ipvsadm -Ln``, ``/proc/net/tcp{,6}``, nginx access logs, and the sectioned output of
the small shell scripts the checks run (one ssh or exec round trip for many probes).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

# --------------------------------------------------------------------------- sectioned scripts

BEGIN = "@@dslab-begin"
END = "@@dslab-end"


def sectioned_script(commands: Mapping[str, str]) -> str:
    """A shell script running each command and framing its output with markers.

    Keys must not contain whitespace. The output is read back by :func:`parse_sections`;
    each section records the command's exit status, so a silent failure cannot pass.
    """
    lines = []
    for key, command in commands.items():
        if re.search(r"\s", key):
            raise ValueError(f"section key {key!r} contains whitespace")
        lines.append(f"echo {shlex.quote(BEGIN + ' ' + key)}")
        lines.append(f"{{ {command} ; }} 2>&1; rc=$?")
        # a newline first: output without one (curl -w) must not swallow the end marker
        lines.append(f"echo; echo \"{END} {key} $rc\"")
    return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    """Output and exit status of one command of a sectioned script."""

    returncode: int
    output: str


def parse_sections(text: str) -> Dict[str, Section]:
    """Read the output of :func:`sectioned_script`; unterminated sections are dropped."""
    sections: Dict[str, Section] = {}
    key: Optional[str] = None
    body: List[str] = []
    for line in (text or "").splitlines():
        if line.startswith(BEGIN + " "):
            key, body = line[len(BEGIN) + 1:].strip(), []
        elif line.startswith(END + " ") and key is not None:
            parts = line.split()
            try:
                code = int(parts[-1])
            except ValueError:
                code = -1
            sections[key] = Section(code, "\n".join(body).rstrip("\n"))
            key = None
        elif key is not None:
            body.append(line)
    return sections


# --------------------------------------------------------------------------- ip -o addr


@dataclass(frozen=True)
class InterfaceAddress:
    """One line of ``ip -o addr show``."""

    interface: str
    address: ipaddress._BaseAddress  # noqa: SLF001
    prefixlen: int
    flags: Tuple[str, ...]

    @property
    def version(self) -> int:
        """4 or 6."""
        return self.address.version


_IP_ADDR = re.compile(r"^\d+:\s+(?P<ifname>\S+?)(?:@\S+)?\s+inet6?\s+(?P<addr>[0-9a-fA-F.:]+)/(?P<plen>\d+)(?P<rest>.*)$")
_FLAG_WORDS = ("tentative", "dadfailed", "deprecated", "noprefixroute", "dynamic", "secondary", "temporary", "mngtmpaddr")


def parse_ip_addr(text: str) -> List[InterfaceAddress]:
    """Parse ``ip -o addr show``: interface, address, prefix length and flags of each line."""
    found = []
    for line in (text or "").splitlines():
        match = _IP_ADDR.match(line.strip())
        if not match:
            continue
        rest = match.group("rest").split("\\")[0].split()
        flags = tuple(word for word in rest if word in _FLAG_WORDS)
        found.append(InterfaceAddress(match.group("ifname"), ipaddress.ip_address(match.group("addr")),
                                      int(match.group("plen")), flags))
    return found


# --------------------------------------------------------------------------- getent ahosts


def parse_getent_ahosts(text: str) -> List[ipaddress._BaseAddress]:  # noqa: SLF001
    """The distinct addresses of ``getent ahosts NAME`` output, in order."""
    seen = []
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            address = ipaddress.ip_address(parts[0])
        except ValueError:
            continue
        if address not in seen:
            seen.append(address)
    return seen


# --------------------------------------------------------------------------- ipvsadm -Ln


@dataclass(frozen=True)
class RealServer:
    """A ``  -> addr:port Forward Weight ActiveConn InActConn`` line."""

    address: ipaddress._BaseAddress  # noqa: SLF001
    port: int
    forward: str
    weight: int


@dataclass
class VirtualServer:
    """A ``TCP  addr:port scheduler [flags]`` line and its real servers."""

    protocol: str
    address: ipaddress._BaseAddress  # noqa: SLF001
    port: int
    scheduler: str
    real_servers: List[RealServer] = field(default_factory=list)


_HOSTPORT = r"(?:\[(?P<{0}6>[0-9a-fA-F:.]+)\]|(?P<{0}4>[0-9.]+)):(?P<{0}port>\d+)"
_VS = re.compile(r"^(?P<proto>TCP|UDP|SCTP)\s+" + _HOSTPORT.format("v") + r"\s+(?P<sched>\S+)")
_RS = re.compile(r"^\s+->\s+" + _HOSTPORT.format("r") + r"\s+(?P<fwd>\S+)\s+(?P<weight>\d+)")


def parse_ipvsadm(text: str) -> Dict[Tuple[str, ipaddress._BaseAddress, int], VirtualServer]:  # noqa: SLF001
    """Parse ``ipvsadm -Ln`` into virtual servers keyed by (protocol, address, port).

    Header lines and firewall-mark (``FWM``) services are ignored.
    """
    servers: Dict[Tuple[str, ipaddress._BaseAddress, int], VirtualServer] = {}
    current: Optional[VirtualServer] = None
    for line in (text or "").splitlines():
        vs = _VS.match(line)
        if vs:
            address = ipaddress.ip_address(vs.group("v6") or vs.group("v4"))
            current = VirtualServer(vs.group("proto"), address, int(vs.group("vport")), vs.group("sched"))
            servers[(current.protocol, address, current.port)] = current
            continue
        rs = _RS.match(line)
        if rs and current is not None:
            current.real_servers.append(RealServer(ipaddress.ip_address(rs.group("r6") or rs.group("r4")),
                                                   int(rs.group("rport")), rs.group("fwd"), int(rs.group("weight"))))
        elif line and not line.startswith(" "):
            current = None  # a header or FWM line: real servers below it are not ours
    return servers


# --------------------------------------------------------------------------- /proc/net/tcp{,6}

TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Socket:
    """A row of ``/proc/net/tcp`` or ``/proc/net/tcp6``."""

    address: ipaddress._BaseAddress  # noqa: SLF001
    port: int
    state: str

    @property
    def listening(self) -> bool:
        """True in the LISTEN state (``0A``)."""
        return self.state == TCP_LISTEN


def _proc_address(hexaddr: str) -> ipaddress._BaseAddress:  # noqa: SLF001
    """Decode a /proc/net address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hexaddr)
    words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
    return ipaddress.ip_address(b"".join(words))


def parse_proc_net_tcp(text: str) -> List[Socket]:
    """Parse the rows of ``/proc/net/tcp`` and ``/proc/net/tcp6`` (both may be concatenated).

    The family follows from the address width (8 or 32 hex digits); header lines are skipped.
    """
    sockets = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].endswith(":") or ":" not in parts[1]:
            continue
        hexaddr, hexport = parts[1].split(":")
        if len(hexaddr) not in (8, 32):
            continue
        try:
            sockets.append(Socket(_proc_address(hexaddr), int(hexport, 16), parts[3].upper()))
        except ValueError:
            continue
    return sockets


# --------------------------------------------------------------------------- nginx access log


@dataclass(frozen=True)
class AccessLogLine:
    """The fields of nginx's ``main``/``combined`` log format the checks need, and the
    ``server=$server_addr pod=$hostname`` the lab's ``log_format dslab`` adds."""

    remote_addr: str
    request: str
    status: int
    user_agent: str
    server: str = ""
    pod: str = ""


_ACCESS = re.compile(
    r'^(?:\S+\s+)?(?P<addr>[0-9a-fA-F.:]+) - \S+ \[[^\]]+\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+'
    r'(?: "[^"]*" "(?P<agent>[^"]*)")?'
    r'(?: server=(?P<server>\S+) pod=(?P<pod>\S+))?'
)


def parse_access_log(text: str) -> List[AccessLogLine]:
    """Parse nginx access log lines (a ``kubectl logs --prefix`` ``[pod/...]`` prefix is allowed)."""
    lines = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("[pod/"):
            line = line.split("] ", 1)[-1]
        match = _ACCESS.match(line)
        if match:
            lines.append(AccessLogLine(match.group("addr"), match.group("request"), int(match.group("status")),
                                       match.group("agent") or "", match.group("server") or "", match.group("pod") or ""))
    return lines


# --------------------------------------------------------------------------- ip -6 route show table local


@dataclass(frozen=True)
class Route:
    """One line of ``ip route show``: its type (``local``, ``anycast``, ``multicast``, ...;
    ``unicast`` when iproute2 prints none), destination, device and protocol (``proto``;
    empty when iproute2 leaves it out, as it does for ``boot``)."""

    kind: str
    destination: str
    device: str
    protocol: str


_ROUTE_TYPES = ("unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole",
                "nat", "anycast")


def parse_routes(text: str) -> List[Route]:
    """Parse ``ip route show`` lines, in either spacing of iproute2 (older versions print two
    spaces between fields: ``local ::1 dev lo  proto none  metric 0``)."""
    routes = []
    for line in (text or "").splitlines():
        words = line.split()
        if not words:
            continue
        kind = words.pop(0) if words[0] in _ROUTE_TYPES else "unicast"
        if not words:
            continue
        value = {key: words[i + 1] for i, key in enumerate(words[1:-1], start=1) if key in ("dev", "proto")}
        routes.append(Route(kind, words[0], value.get("dev", ""), value.get("proto", "")))
    return routes


# --------------------------------------------------------------------------- misc


def parse_sysctl(text: str) -> Dict[str, str]:
    """``key = value`` lines of ``sysctl KEY...`` as a dict."""
    values = {}
    for line in (text or "").splitlines():
        if " = " in line:
            key, value = line.split(" = ", 1)
            values[key.strip()] = value.strip()
    return values


def parse_modules(text: str) -> List[str]:
    """Module names from ``/proc/modules`` (or ``lsmod``) output."""
    names = []
    for line in (text or "").splitlines():
        parts = line.split()
        if parts and parts[0] != "Module":
            names.append(parts[0])
    return names


def parse_dig_short(text: str) -> List[ipaddress._BaseAddress]:  # noqa: SLF001
    """The addresses of ``dig +short`` output (CNAME lines and comments are skipped)."""
    found = []
    for line in (text or "").splitlines():
        try:
            found.append(ipaddress.ip_address(line.strip()))
        except ValueError:
            continue
    return found
