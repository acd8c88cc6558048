"""The lab's libvirt network: one dual-stack NAT network with DNS records for every node.

vagrant-libvirt's own network template has no DNS host records and gives guests no
planned IPv6, so the lab defines its network itself and vagrant-libvirt attaches every
machine to it as its management network (found by name and address). The network is
built as XML with ElementTree; it is named after the lab and carries the lab's id as its
UUID (:mod:`lab.identity`), so destroy finds it, and neither destroy nor
:func:`ensure_network` touches a same-named network of another lab.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import ipaddress
import json
import os
import pwd
import shlex
import subprocess
import xml.etree.ElementTree as ET
from typing import Iterable, Iterator, List, Optional

from . import identity
from .config import LabConfig
from .errors import LabError, PreflightError


def network_xml(cfg: LabConfig, lab_id: Optional[str] = None) -> str:
    """The libvirt network XML of the lab (a string, pretty-printed), with ``lab_id`` as its UUID."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = cfg.network_name
    if lab_id:
        ET.SubElement(net, "uuid").text = lab_id
    forward = ET.SubElement(net, "forward", mode="nat")
    ET.SubElement(forward, "nat", ipv6="yes")
    ET.SubElement(net, "bridge", name=cfg.bridge_name, stp="on", delay="0")
    ET.SubElement(net, "domain", name=cfg.domain, localOnly="yes")

    dns = ET.SubElement(net, "dns")
    for family in ("ipv4", "ipv6"):
        for node in cfg.nodes:
            host = ET.SubElement(dns, "host", ip=str(getattr(node, family)))
            ET.SubElement(host, "hostname").text = node.name
            ET.SubElement(host, "hostname").text = node.fqdn(cfg.domain)

    ip4 = ET.SubElement(net, "ip", address=str(cfg.gateway_ipv4), netmask=str(cfg.network_ipv4.netmask))
    dhcp4 = ET.SubElement(ip4, "dhcp")
    ET.SubElement(dhcp4, "range", start=str(cfg.dhcp_ipv4_range.first), end=str(cfg.dhcp_ipv4_range.last))
    for node in cfg.nodes:
        ET.SubElement(dhcp4, "host", mac=node.mac, name=node.name, ip=str(node.ipv4))

    # A DHCPv6 range makes dnsmasq advertise the prefix as "managed" without SLAAC, so
    # guests carry only their planned static IPv6 address on this network.
    ip6 = ET.SubElement(net, "ip", family="ipv6", address=str(cfg.gateway_ipv6),
                        prefix=str(cfg.network_ipv6.prefixlen))
    dhcp6 = ET.SubElement(ip6, "dhcp")
    ET.SubElement(dhcp6, "range", start=str(cfg.dhcp_ipv6_range.first), end=str(cfg.dhcp_ipv6_range.last))

    # kube-proxy (IPVS, strictARP) puts externalIPs on every node's kube-ipvs0, where no
    # node answers ARP or neighbour discovery for them: the host reaches them by a route.
    via = external_ip_gateway(cfg)
    ET.SubElement(net, "route", address=str(cfg.external_ipv4), prefix="32", gateway=str(via.ipv4))
    ET.SubElement(net, "route", family="ipv6", address=str(cfg.external_ipv6), prefix="128", gateway=str(via.ipv6))

    ET.indent(net)
    return ET.tostring(net, encoding="unicode") + "\n"


def external_ip_gateway(cfg: LabConfig):
    """The node the host routes the externalIP Services through (the first worker)."""
    return cfg.workers[0]


def _libvirt():
    try:
        import libvirt  # noqa: PLC0415 - optional at import time so rendering works without it
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise LabError("libvirt-python is not installed; run: pip install libvirt-python") from exc
    # libvirt's default error handler prints every error on stderr ("libvirt: QEMU Driver error :
    # Domain not found: ..."), even those the lab expects and handles (looking up a machine that
    # does not exist yet). Errors still raise libvirtError; the status lines stay the only output.
    libvirt.registerErrorHandler(_quiet, None)
    return libvirt


#: The group whose members may use the system libvirt (Debian's and Ubuntu's libvirt-daemon-system).
LIBVIRT_GROUP = "libvirt"


def joined_since_login(group: str) -> bool:
    """True when the user is a member of ``group`` (/etc/group) that this process does not have yet."""
    try:
        entry = grp.getgrnam(group)
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False
    return user in entry.gr_mem and entry.gr_gid not in os.getgroups() and entry.gr_gid != os.getgid()


def denied(exc, libvirt) -> bool:
    """True when libvirt refused the connection for want of permission: its socket (EACCES), or polkit."""
    err = getattr(exc, "err", None) or ()
    errno_ = err[7] if len(err) > 7 else None
    return (errno_ == errno.EACCES or "Permission denied" in (exc.get_error_message() or "")
            or exc.get_error_code() in (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_UNAVAILABLE))


def _quiet(_ctx, _error) -> None:
    """A libvirt error handler that prints nothing."""


@contextlib.contextmanager
def connect(uri: str) -> Iterator:
    """``with connect(uri) as conn:`` a libvirt connection, closed afterwards.

    A failure to connect is a one-line :class:`PreflightError`.
    """
    libvirt = _libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        if denied(exc, libvirt) and uri.split("://", 1)[-1].startswith("/"):
            if joined_since_login(LIBVIRT_GROUP):
                fix = (f"you joined the {LIBVIRT_GROUP} group after this login: log out and in again (a new login "
                       "has the group)")
            else:
                fix = (f"your user may not use libvirt here: run `sudo usermod -aG {LIBVIRT_GROUP} $USER`, then log "
                       "out and in again (only a new login has the group; `scripts/setup-host` does the first part)")
        else:
            fix = "is libvirtd running and are you allowed to use it?"
        message = " ".join((exc.get_error_message() or "no reason given").split())  # one line
        raise PreflightError([f"lab.libvirt_uri: cannot connect to {uri}: {message}; {fix}"]) from exc
    try:
        yield conn
    finally:
        conn.close()


def is_active(conn, name: str) -> bool:
    """True when the libvirt network ``name`` exists and runs."""
    net = _lookup(conn, name)
    return net is not None and bool(net.isActive())


def _lookup(conn, name):
    libvirt = _libvirt()
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return None
        raise


def _canonical(xml: str) -> str:
    """The parts of a network definition the lab controls, for comparison."""
    root = ET.fromstring(xml)
    root.attrib.clear()  # an active network in use carries connections='N'
    for tag in ("uuid", "mac"):
        for el in root.findall(tag):
            root.remove(el)
    forward = root.find("forward")
    if forward is not None:
        for child in list(forward):
            if child.tag != "nat":
                forward.remove(child)
        nat = forward.find("nat")
        if nat is not None:
            for child in list(nat):
                nat.remove(child)
    for el in root.iter():
        el.text = (el.text or "").strip() or None
        el.tail = None
    bridge = root.find("bridge")
    if bridge is not None:
        bridge.attrib = {"name": bridge.get("name")}
    return ET.tostring(root, encoding="unicode")


def foreign_network_line(cfg: LabConfig) -> str:
    """The line that refuses to touch a same-named network of another lab."""
    virsh, name = f"virsh -c {shlex.quote(cfg.libvirt_uri)}", shlex.quote(cfg.network_name)
    return (f"lab.name: libvirt network {cfg.network_name} exists but is not this lab's (another checkout's or "
            "another state directory's, made by hand, or made before labs carried an id); choose another lab.name, "
            "or, if it is really this lab's, run `invoke lab.destroy` here (it takes back a lab made before labs "
            "carried an id while .vagrant still names its machines) or remove the network by hand once no machine "
            f"uses it: {virsh} net-destroy {name}; {virsh} net-undefine {name}")


def owned_network(cfg: LabConfig, conn, owner: identity.Owner):
    """(network, owned): the network named like the lab's, or None, and whether it is the lab's."""
    net = _lookup(conn, cfg.network_name)
    return net, net is not None and owner.owns(net.UUIDString())


def ensure_network(cfg: LabConfig, conn, lab_id: Optional[str] = None) -> str:
    """Define and start the lab network; return what was done.

    An existing network of the same name and definition is kept (and started). One
    with a different definition is replaced only when no running machine uses it. A
    same-named network that is not the lab's (:mod:`lab.identity`) is never touched:
    :class:`LabError`. ``lab_id`` defaults to the id in the lab's state (made if new).
    """
    libvirt = _libvirt()
    lab_id = lab_id or identity.ensure_id(cfg)
    wanted = network_xml(cfg, lab_id)
    net, owned = owned_network(cfg, conn, identity.Owner(cfg.state_dir, lab_id))
    if net is not None and not owned:
        raise LabError(foreign_network_line(cfg))
    action = "kept"
    if net is not None and _canonical(net.XMLDesc(0)) != _canonical(wanted):
        if net.isActive() and _attached_domains(conn, cfg.network_name):
            raise LabError(f"network {cfg.network_name} exists with other settings and machines use it; "
                           "run `invoke lab.destroy` first")
        if net.isActive():
            net.destroy()
        net.undefine()
        net, action = None, "replaced"
    if net is None:
        try:
            net = conn.networkDefineXML(wanted)
        except libvirt.libvirtError as exc:
            raise LabError(f"libvirt refused the network of lab {cfg.name}: {exc.get_error_message()}") from exc
        action = "defined" if action == "kept" else action
    if not net.isActive():
        try:
            net.create()
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot start network {cfg.network_name}: {exc.get_error_message()}") from exc
    net.setAutostart(True)
    return action


def _attached_domains(conn, network_name: str) -> List[str]:
    names = []
    for dom in conn.listAllDomains(0):
        root = ET.fromstring(dom.XMLDesc(0))
        for source in root.findall("./devices/interface/source"):
            if source.get("network") == network_name:
                names.append(dom.name())
    return names


def delete_network(cfg: LabConfig, conn, owner: Optional[identity.Owner] = None) -> bool:
    """Stop and undefine the lab network; False when there was none or it is not the lab's."""
    net, owned = owned_network(cfg, conn, owner or identity.Owner(cfg.state_dir))
    if not owned:
        return False
    if net.isActive():
        net.destroy()
    net.undefine()
    return True


def network_ranges(conn) -> List[tuple]:
    """(name, network) for every address of every libvirt network on that connection."""
    found = []
    for net in conn.listAllNetworks(0):
        root = ET.fromstring(net.XMLDesc(0))
        for ip in root.findall("ip"):
            address = ip.get("address")
            if not address:
                continue
            prefix = ip.get("prefix") or ip.get("netmask") or ("64" if ip.get("family") == "ipv6" else "24")
            found.append((net.name(), ipaddress.ip_network(f"{address}/{prefix}", strict=False)))
    return found


def host_ranges() -> List[tuple]:
    """(where, network) for every address and route on this host (``ip -j``)."""
    found = []
    for args, kind in ((["ip", "-j", "addr", "show"], "address"), (["ip", "-j", "route", "show", "table", "all"], "route")):
        for family in ("-4", "-6"):
            try:
                out = subprocess.run([args[0], family, *args[1:]], capture_output=True, text=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError):
                continue
            for entry in json.loads(out or "[]"):
                if kind == "address":
                    for info in entry.get("addr_info", []):
                        net = ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
                        found.append((f"address on {entry.get('ifname')}", net))
                else:
                    dst = entry.get("dst")
                    if not dst or dst == "default" or entry.get("type") in ("local", "broadcast", "multicast", "anycast"):
                        continue
                    try:
                        net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/{32 if ':' not in dst else 128}", strict=False)
                    except ValueError:
                        continue
                    if net.is_link_local or net.is_multicast or net.is_loopback:
                        continue
                    found.append((f"route via {entry.get('dev')}", net))
    return found


def clashes(cfg: LabConfig, taken: Iterable[tuple]) -> List[str]:
    """Lines naming every lab range that overlaps something already in use."""
    ours = [("network_ipv4", cfg.network_ipv4), ("network_ipv6", cfg.network_ipv6),
            ("pod_subnets", cfg.pod_subnets[0]), ("pod_subnets", cfg.pod_subnets[1]),
            ("service_subnets", cfg.service_subnets[0]), ("service_subnets", cfg.service_subnets[1])]
    problems = []
    for where, net in taken:
        for key, mine in ours:
            if mine.version == net.version and mine.overlaps(net) and not net.prefixlen == 0:
                problems.append(f"lab.{key}: {mine} overlaps {net} ({where}); choose a free range")
    return sorted(set(problems))
