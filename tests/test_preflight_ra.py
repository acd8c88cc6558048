"""Preflight finds what makes libvirt refuse the lab's IPv6 network: router-advertised routes.

The rule is libvirt's (``virNetDevIPCheckIPv6Forwarding``): a route with RTF_ADDRCONF on an
interface with ``accept_ra`` 1, or 0 while ``all`` is 1. The real test sends a router
advertisement from one end of a veth pair to the other inside a private namespace, so the
kernel itself makes the route, and runs the lab's check inside that namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from lab import preflight

#: /proc/net/ipv6_route as a host with an RA-learned default route on eth0 shows it
#: (flags 00450003 = RTF_ADDRCONF | RTF_DEFAULT | RTF_EXPIRES | RTF_GATEWAY | RTF_UP).
ROUTES = """\
fd00db10000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001  virbr9
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000d0c144fffed095bc 00000400 00000001 00000000 00450003     eth0
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 000c0001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000d0c144fffed095bc 00000400 00000001 00000000 00450003    wlan0
"""


@pytest.mark.parametrize("values, bad", [
    ({"all": 1, "eth0": 1, "wlan0": 2}, ["eth0"]),
    ({"all": 1, "eth0": 2, "wlan0": 2}, []),
    ({"all": 1, "eth0": 0, "wlan0": 2}, ["eth0"]),  # 0 on the interface, but "all" says 1
    ({"all": 0, "eth0": 0, "wlan0": 0}, []),
    ({"all": 0, "eth0": 1, "wlan0": 1}, ["eth0", "wlan0"]),
])
def test_ra_routes_by_libvirts_rule(values, bad):
    found = preflight.ra_route_problems(ROUTES, values.get)
    assert [line.split()[2] for line in found] == bad  # "host: interface NAME ..."
    for name, line in zip(bad, found):
        assert f"sysctl -w net.ipv6.conf.{name}.accept_ra=2" in line


def test_no_ipv6_or_no_ra_routes_is_fine():
    assert preflight.ra_route_problems("", {"all": 1}.get) == []
    assert preflight.ra_route_problems(ROUTES.splitlines()[0], {"all": 1, "virbr9": 1}.get) == []


#: A router advertisement (RFC 4861 4.2) with a router lifetime: the receiver adds a default route.
SEND_RA = """
import socket, struct, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
sock.sendto(struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0),
            ("ff02::1", 0, 0, socket.if_nametoindex(sys.argv[1])))
"""
CHECK = "from lab import preflight; print('\\n'.join(preflight.host_ra_route_problems()))"


def test_real_router_advertisement_in_a_namespace():
    if shutil.which("ip") is None:
        pytest.skip("ip (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.fail("this test needs root (ip netns)")
    from harness.netns import NetNS

    ns = NetNS.create()

    def in_ns(*argv, check=True):
        return subprocess.run(["ip", "netns", "exec", ns.name, *argv], check=check, capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        for key in ("all", "default"):
            in_ns("sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0")
        in_ns("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "router0")
        in_ns("ip", "link", "set", "uplink0", "up")
        in_ns("ip", "link", "set", "router0", "up")
        assert in_ns(sys.executable, "-c", CHECK).stdout.strip() == ""  # no RA yet
        deadline = time.monotonic() + 10
        while "proto ra" not in in_ns("ip", "-6", "route", "show", "dev", "uplink0").stdout:
            assert time.monotonic() < deadline, "the kernel made no route from the advertisement"
            in_ns(sys.executable, "-c", SEND_RA, "router0")
            time.sleep(0.5)
        found = in_ns(sys.executable, "-c", CHECK).stdout.strip().splitlines()
        assert len(found) == 1 and found[0].startswith("host: interface uplink0 has IPv6 routes from router")
        in_ns("sysctl", "-qw", "net.ipv6.conf.uplink0.accept_ra=2")
        assert in_ns(sys.executable, "-c", CHECK).stdout.strip() == ""
    finally:
        ns.delete()
