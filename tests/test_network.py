"""The lab network, defined by the project's code on a real libvirtd inside a namespace."""

from __future__ import annotations

import ipaddress
import time
import xml.etree.ElementTree as ET

import pytest

from lab import config, destroy, identity, network, render
from lab.context import State
from lab.errors import LabError

LAB = "dslabnet"
DNS_WAIT_S = 30


def lab_config(tmp_path, **extra):
    return config.load({"name": LAB, "state_dir": str(tmp_path / "state"), **extra})


# ------------------------------------------------------------------ pure parts


def test_network_xml_has_records_and_reservations_for_every_node():
    cfg = config.load({"workers": 3})
    root = ET.fromstring(network.network_xml(cfg))
    assert root.findtext("name") == cfg.network_name
    assert root.find("forward").get("mode") == "nat"
    assert root.find("forward/nat").get("ipv6") == "yes"
    hosts = {(h.get("ip"), tuple(n.text for n in h.findall("hostname"))) for h in root.findall("dns/host")}
    for node in cfg.nodes:
        names = (node.name, node.fqdn(cfg.domain))
        assert (str(node.ipv4), names) in hosts
        assert (str(node.ipv6), names) in hosts
    reservations = {(h.get("mac"), h.get("ip")) for h in root.findall("ip/dhcp/host")}
    assert reservations == {(n.mac, str(n.ipv4)) for n in cfg.nodes}
    ip6 = root.find("ip[@family='ipv6']")
    assert ip6.get("address") == str(cfg.gateway_ipv6) and ip6.get("prefix") == "64"
    routes = {(r.get("address"), r.get("prefix"), r.get("gateway")) for r in root.findall("route")}
    via = cfg.workers[0]
    assert routes == {(str(cfg.external_ipv4), "32", str(via.ipv4)), (str(cfg.external_ipv6), "128", str(via.ipv6))}


@pytest.mark.parametrize("taken, expected", [
    ([("address on eth0", ipaddress.ip_network("192.168.200.0/24"))], "lab.network_ipv4: 192.168.200.0/24 overlaps"),
    ([("route via wg0", ipaddress.ip_network("10.96.0.0/12"))], "lab.service_subnets: 10.96.0.0/16 overlaps"),
    ([("libvirt network other", ipaddress.ip_network("fd00:db1::/48"))], "lab.network_ipv6: fd00:db1::/64 overlaps"),
    ([("route via eth0", ipaddress.ip_network("172.16.0.0/12"))], None),
])
def test_clashes_with_host_ranges(taken, expected):
    found = network.clashes(config.load({}), taken)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(expected), found


# ------------------------------------------------------------------ ownership, on libvirt's test driver

SHARED = "test:///default"


@pytest.fixture()
def test_host():
    """test:///default, held open so every connection of the test sees the same objects."""
    with network.connect(SHARED) as conn:
        try:
            yield conn
        finally:
            for dom in conn.listAllDomains(0):
                if dom.name() != "test":
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            for net in conn.listAllNetworks(0):
                if net.name() != "default":
                    if net.isActive():
                        net.destroy()
                    net.undefine()


def test_network_carries_the_labs_id_as_its_uuid(test_host, tmp_path):
    cfg = lab_config(tmp_path, libvirt_uri=SHARED)
    assert network.ensure_network(cfg, test_host) == "defined"
    lab_id = identity.recorded_id(cfg.state_dir)
    assert identity.valid(lab_id)
    assert test_host.networkLookupByName(cfg.network_name).UUIDString() == lab_id
    assert ET.fromstring(render.artifacts(cfg, State(cfg.state_dir / "state.json"))["network.xml"]).findtext("uuid") \
        == lab_id
    assert network.ensure_network(cfg, test_host) == "kept"
    assert network.ensure_network(lab_config(tmp_path, libvirt_uri=SHARED, workers=3), test_host) == "replaced"
    assert test_host.networkLookupByName(cfg.network_name).UUIDString() == lab_id


@pytest.mark.parametrize("machines", ["none", "stopped", "running"])
@pytest.mark.parametrize("active", [True, False])
def test_a_same_named_network_of_another_lab_is_never_replaced(test_host, tmp_path, machines, active):
    first = lab_config(tmp_path / "first", libvirt_uri=SHARED)
    network.ensure_network(first, test_host)
    net = test_host.networkLookupByName(first.network_name)
    before = net.XMLDesc(0)
    if machines != "none":
        dom = test_host.defineXML(
            f"<domain type='test'><name>{first.domain_name(first.control_plane)}</name><memory>1024</memory>"
            f"<os><type>hvm</type></os><devices><interface type='network'><source network='{first.network_name}'/>"
            "</interface></devices></domain>")
        if machines == "running":
            dom.create()
    if not active:
        net.destroy()
    second = lab_config(tmp_path / "second", libvirt_uri=SHARED, workers=3)   # another definition, too
    with pytest.raises(LabError) as raised:
        network.ensure_network(second, test_host)
    assert str(raised.value).startswith(f"lab.name: libvirt network {first.network_name} exists but is not this lab's")
    assert "\n" not in str(raised.value)
    net = test_host.networkLookupByName(first.network_name)
    assert net.UUIDString() == identity.recorded_id(first.state_dir)
    assert bool(net.isActive()) == active
    assert ET.tostring(ET.fromstring(net.XMLDesc(0)).find("ip")) == ET.tostring(ET.fromstring(before).find("ip"))
    # ... and the second checkout's destroy leaves it too.
    assert network.delete_network(second, test_host) is False
    assert test_host.networkLookupByName(first.network_name).UUIDString() == identity.recorded_id(first.state_dir)


def test_a_network_without_the_labs_id_is_not_the_labs(test_host, tmp_path):
    """A network of the lab's name made by hand (or by a lab without an id) is left alone."""
    cfg = lab_config(tmp_path, libvirt_uri=SHARED)
    test_host.networkDefineXML(network.network_xml(cfg))
    with pytest.raises(LabError, match="is not this lab's"):
        network.ensure_network(cfg, test_host)
    assert network.delete_network(cfg, test_host) is False
    assert cfg.network_name in [n.name() for n in test_host.listAllNetworks(0)]


# ------------------------------------------------------------------ real libvirtd


def dig(libvirtd, server, name, rrtype):
    result = libvirtd.run(["dig", f"@{server}", "+short", "+time=2", "+tries=1", rrtype, name], check=False)
    return result.stdout.split()


def wait_for_answer(libvirtd, server, name, rrtype):
    deadline = time.monotonic() + DNS_WAIT_S
    answer = []
    while time.monotonic() < deadline:
        answer = dig(libvirtd, server, name, rrtype)
        if answer and not answer[0].startswith(";;"):
            break
        time.sleep(1)
    return answer


def plug_guest_port(libvirtd, bridge):
    """A veth pair on the bridge, as a guest's NIC would be: the bridge gets carrier and its
    IPv6 address leaves the tentative state (no carrier, no DAD, no IPv6 service)."""
    libvirtd.run(["ip", "link", "add", "dslabt-port", "type", "veth", "peer", "name", "dslabt-guest"])
    libvirtd.run(["ip", "link", "set", "dslabt-port", "master", bridge, "up"])
    libvirtd.run(["ip", "link", "set", "dslabt-guest", "up"])
    deadline = time.monotonic() + DNS_WAIT_S
    while time.monotonic() < deadline:
        shown = libvirtd.run(["ip", "-6", "addr", "show", "dev", bridge, "scope", "global"]).stdout
        if "inet6" in shown and "tentative" not in shown:
            return
        time.sleep(1)
    raise AssertionError(f"IPv6 on {bridge} stayed tentative: {shown}")


@pytest.mark.libvirtd
def test_lab_network_on_real_libvirtd_answers_both_families_and_is_destroyed(libvirtd, tmp_path):
    cfg = lab_config(tmp_path)
    with network.connect(libvirtd.uri) as conn:
        assert network.ensure_network(cfg, conn) == "defined"
        assert network.ensure_network(cfg, conn) == "kept"
        net = conn.networkLookupByName(cfg.network_name)
        assert net.isActive() and net.autostart()
    assert cfg.network_name in libvirtd.networks()
    plug_guest_port(libvirtd, cfg.bridge_name)

    for server in (str(cfg.gateway_ipv4), str(cfg.gateway_ipv6)):
        for node in cfg.nodes:
            for name in (node.name, node.fqdn(cfg.domain)):
                assert wait_for_answer(libvirtd, server, name, "A") == [str(node.ipv4)], (server, name)
                assert wait_for_answer(libvirtd, server, name, "AAAA") == [str(node.ipv6)], (server, name)
    # The externalIPs are routed through the first worker.
    routes = libvirtd.run(["ip", "route", "show", f"{cfg.external_ipv4}/32"]).stdout
    assert f"via {cfg.workers[0].ipv4}" in routes, routes
    routes6 = libvirtd.run(["ip", "-6", "route", "show", f"{cfg.external_ipv6}/128"]).stdout
    assert f"via {cfg.workers[0].ipv6}" in routes6, routes6
    # Names outside the lab are not forwarded anywhere.
    assert dig(libvirtd, str(cfg.gateway_ipv4), f"nothing.{cfg.domain}", "A") == []

    libvirtd.run(["ip", "link", "del", "dslabt-port"])
    render.render_all(cfg, cfg.state_dir)
    removed = destroy.destroy(destroy.context(cfg))
    assert removed["networks"] == [cfg.network_name]
    assert cfg.network_name not in libvirtd.networks()
    assert not cfg.state_dir.exists()
    # Twice is safe.
    assert destroy.destroy(destroy.context(cfg)) == {
        "domains": [], "volumes": [], "networks": []}


@pytest.mark.libvirtd
def test_changed_network_is_replaced_and_other_networks_are_left_alone(libvirtd, tmp_path):
    other = config.load({"name": "otherlab", "network_ipv4": "192.168.201.0/24", "network_ipv6": "fd00:db2::/64",
                         "dhcp_ipv4_range": "192.168.201.100-192.168.201.139",
                         "dhcp_ipv6_range": "fd00:db2::1000-fd00:db2::10ff",
                         "metallb_ipv4_range": "192.168.201.240-192.168.201.250",
                         "metallb_ipv6_range": "fd00:db2::240-fd00:db2::250",
                         "external_ipv4": "192.168.201.145", "external_ipv6": "fd00:db2::120",
                         "state_dir": str(tmp_path / "other")})
    cfg = lab_config(tmp_path)
    with network.connect(libvirtd.uri) as conn:
        network.ensure_network(other, conn)
        network.ensure_network(cfg, conn)
        # The other lab's range is now taken: a lab planned on it is refused at up time.
        taken = [(f"libvirt network {n}", net) for n, net in network.network_ranges(conn) if n != "clash"]
        clash = config.load({"name": "clash", "network_ipv4": "192.168.201.0/24",
                             "dhcp_ipv4_range": "192.168.201.100-192.168.201.139",
                             "metallb_ipv4_range": "192.168.201.240-192.168.201.250",
                             "external_ipv4": "192.168.201.145"})
        assert any("otherlab" in line for line in network.clashes(clash, taken))
        changed = lab_config(tmp_path, workers=3)
        assert network.ensure_network(changed, conn) == "replaced"
        root = ET.fromstring(conn.networkLookupByName(cfg.network_name).XMLDesc(0))
        assert len(root.findall("ip/dhcp/host")) == 4
    destroy.destroy(destroy.context(cfg))
    assert other.network_name in libvirtd.networks()
    destroy.destroy(destroy.context(other))
    assert other.network_name not in libvirtd.networks()
