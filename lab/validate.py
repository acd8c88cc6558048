"""Validation: every check of the configuration, in one pass, before anything is made.

:func:`validate` takes settings whose defaults are filled (:func:`lab.defaults.fill_defaults`)
and returns the :class:`~lab.settings.LabConfig`, or raises one
:class:`~lab.errors.ConfigError` listing *every* problem, one line each naming
``lab.<setting>`` and the fix: unknown settings, values of the wrong type or form, addresses
and ranges that collide, what the profile cannot do, and what the workloads need of the
MetalLB ranges. It fills nothing: a setting that is still unset is a problem.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Mapping

from . import layout, lbplan
from .errors import ConfigError
from .parse import (Problems, read_address, read_bool, read_int, read_network, read_pair, read_range, reserved,
                    text_problem)
from .profiles import PROFILES
from .safeyaml import load_yaml
from .settings import (BOX_NAME, BOX_URL, CPUS_MAX, DEFAULTS, DNS_LABEL, DNS_NAME, DNS_NAME_MAX, DRIVERS,
                       LIBVIRT_URI, LIST_MAX, MEMORY_MIN_MB, NAME_MAX, NODES_MAX, NON_ASCII_OK, POOL_NAME,
                       PROXY_MODES, ROLES, TEXT_SETTINGS, WORKERS_MAX, AddressRange, LabConfig, Node,
                       dir_problem, key_text, shown, state_dir_path)


def _check_texts(problems, raw):
    """Every string anywhere in the settings: bounded, no control characters, ASCII."""
    def walk(key, value, non_ascii_ok, depth):
        if depth > 4:
            problems.refuse(key, "is nested too deeply; give a single value or a list of {name, role, ipv4, ipv6}")
        elif isinstance(value, str):
            reason = text_problem(value, non_ascii_ok)
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


def _mac(lab: str, index: int) -> str:
    """A stable locally administered MAC per lab and node (QEMU's 52:54:00 prefix)."""
    digest = hashlib.sha256(lab.encode()).digest()
    return "52:54:00:%02x:%02x:%02x" % (digest[0], digest[1], index)


def _nodes(problems, raw):
    """The node list of ``lab.nodes`` (a list, or its YAML text; planned from ``lab.workers``
    by the defaults when not given)."""
    lab = str(raw.get("name"))
    given = raw.get("nodes")
    if isinstance(given, str):
        try:
            given = load_yaml(given, "lab.nodes")
        except ConfigError as exc:
            problems.add("nodes", f"is not valid YAML/JSON ({exc.problems[0]}); give a list of {{name, role, ipv4, ipv6}}")
            return ()
    if given is None:
        if not any(p.startswith(("lab.network_ipv4:", "lab.network_ipv6:", "lab.workers:")) for p in problems):
            problems.add("nodes", "not set; give a list of {name, role, ipv4, ipv6}, or lab.workers to plan one")
        return ()
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
        v4 = read_address(problems, {key + ".ipv4": entry.get("ipv4")}, key + ".ipv4", 4, "192.168.200.11")
        v6 = read_address(problems, {key + ".ipv6": entry.get("ipv6")}, key + ".ipv6", 6, "fd00:db1::11")
        if v4 is not None and v6 is not None and isinstance(name, str) and isinstance(role, str):
            nodes.append(Node(name, role, v4, v6, _mac(lab, i)))
    roles = [n.role for n in nodes]
    if nodes and roles.count("control-plane") != 1:
        problems.add("nodes", f"needs exactly one node with role control-plane (found {roles.count('control-plane')})")
    if nodes and "worker" not in roles:
        problems.add("nodes", "needs at least one node with role worker")
    return tuple(nodes)


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
            elif reserved(net, addr):
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
        elif reserved(net, rng.first) or reserved(net, rng.last) or rng.first <= net.network_address + 1 <= rng.last:
            problems.add(key, f"{rng} includes the network or gateway address of {net}; start after {net.network_address + 1}")
        else:
            spans.append((key, rng))
    for key, addr, net in (("external_ipv4", ext4, net4), ("external_ipv6", ext6, net6)):
        if addr is None or net is None:
            continue
        if addr not in net:
            problems.add(key, f"{addr} is outside the node network {net}; pick an address inside it")
        elif reserved(net, addr):
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


def _unknown_settings(problems, raw):
    for key in sorted(set(raw) - set(DEFAULTS), key=str):
        close = difflib.get_close_matches(str(key).replace("-", "_"), list(DEFAULTS), n=1, cutoff=0.75)
        hint = f"did you mean lab.{close[0]}?" if close else "remove it; `invoke lab.config` lists the settings"
        problems.add(key, f"unknown setting; {hint}")


def _check_names(problems, raw):
    """The lab's name, libvirt connection, pool, state directory, box and domain."""
    name = raw.get("name")
    if not isinstance(name, str) or not DNS_LABEL.fullmatch(name) or len(name) > NAME_MAX:
        problems.add("name", f"{shown(name)} cannot prefix libvirt and DNS names; use 1-{NAME_MAX} lowercase letters, digits or '-'")
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
        reason = dir_problem(state_dir_path(state_dir))
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


def _check_cache(problems, raw):
    """``lab.cache_dir`` (a directory the lab can make and write, outside the state directory, so
    ``lab.destroy`` keeps it) and ``lab.offline``; return (the cache directory, offline) or Nones."""
    offline = read_bool(problems, raw, "offline")
    cache_dir, state_dir = raw.get("cache_dir"), raw.get("state_dir")
    if not isinstance(cache_dir, str) or not cache_dir.strip():
        problems.add("cache_dir", "must be a non-empty path; leave it unset for ~/.cache/dslab")
        return None, offline
    path = state_dir_path(cache_dir)
    reason = dir_problem(path)
    if reason:
        problems.add("cache_dir", f"{shown(cache_dir)} {reason}")
        return None, offline
    if isinstance(state_dir, str) and state_dir.strip():
        state = Path(os.path.realpath(state_dir_path(state_dir)))
        real = Path(os.path.realpath(path))
        removed = [state / entry.pattern for entry in layout.ENTRIES if entry.removal in ("tree", "sockets")]
        if real == state or any(real == tree or tree in real.parents for tree in removed):
            problems.add("cache_dir", f"{shown(cache_dir)} is lab.state_dir ({state}) or a folder of it that "
                                      "lab.destroy removes; give a directory of its own, or leave lab.cache_dir unset")
            return None, offline
    return path, offline


def _read_networks(problems, raw) -> dict:
    """Every network, range and address setting, read (None where unreadable)."""
    net4 = read_network(problems, raw, "network_ipv4", 4)
    net6 = read_network(problems, raw, "network_ipv6", 6)
    if net4 is not None and net4.prefixlen > 28:
        problems.add("network_ipv4", f"{net4} is too small for the nodes and pools; use a /24 like 192.168.200.0/24")
    if net6 is not None and net6.prefixlen != 64:
        problems.add("network_ipv6", f"{net6} must be a /64 (SLAAC and DHCPv6 need it), like fd00:db1::/64")
    if net6 is not None and not (net6.subnet_of(ipaddress.ip_network("fc00::/7"))):
        problems.add("network_ipv6", f"{net6} is not unique-local space; use an fd00::/8 /64 like fd00:db1::/64")
    return {
        "network_ipv4": net4,
        "network_ipv6": net6,
        "dhcp_ipv4_range": read_range(problems, raw, "dhcp_ipv4_range", 4),
        "dhcp_ipv6_range": read_range(problems, raw, "dhcp_ipv6_range", 6),
        "pod_subnets": read_pair(problems, raw, "pod_subnets"),
        "service_subnets": read_pair(problems, raw, "service_subnets"),
        "docker_ipv6_cidr": read_network(problems, raw, "docker_ipv6_cidr", 6),
        "metallb_ipv4_range": read_range(problems, raw, "metallb_ipv4_range", 4),
        "metallb_ipv6_range": read_range(problems, raw, "metallb_ipv6_range", 6),
        "external_ipv4": read_address(problems, raw, "external_ipv4", 4),
        "external_ipv6": read_address(problems, raw, "external_ipv6", 6),
    }


def _check_profile(problems, profile, raw, nets):
    """What the profile's versions can do: its runtimes and kube-proxy modes, the service
    ranges its API server takes, and the LoadBalancer addresses its Services ask for."""
    runtime = raw.get("runtime")
    if runtime is None:
        problems.add("runtime", f"not set; use one of {', '.join(profile.runtimes)}")
    elif runtime not in profile.runtimes:
        problems.add("runtime", f"{shown(runtime)} is not available on profile {profile.name}; use one of {', '.join(profile.runtimes)}")
    proxy = raw.get("kube_proxy_mode")
    if proxy in PROXY_MODES and proxy not in profile.kube_proxy_modes:
        problems.add("kube_proxy_mode", f"{proxy!r} is not available on profile {profile.name} (nftables needs "
                                        f"Kubernetes 1.31+); use {' or '.join(repr(m) for m in profile.kube_proxy_modes)}")
    if raw.get("box") is None:
        problems.add("box", f"not set; use a Vagrant box name like {profile.box!r}")
    for net in nets["service_subnets"] or ():
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
    for family, users in lbplan.lb_needs(profile).items():
        key = f"metallb_ipv{family}_range"
        rng = nets[key]
        if users and rng is not None and lbplan.size(rng) < len(users):
            problems.add(key, f"{rng} holds {lbplan.size(rng)} address(es) but {len(users)} LoadBalancer address(es) "
                              f"are needed ({', '.join(users)}); widen it to at least {len(users)} addresses")


def _check_sizes(problems, domain, nodes, pods, mask4, mask6):
    """Node names within DNS limits, and a pod block of each family for every node."""
    if isinstance(domain, str):
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
                problems.add("pod_subnets", f"{net} has room for {2 ** (mask - net.prefixlen)} blocks of /{mask}, "
                                            f"fewer than the {len(nodes)} nodes; use a larger pod subnet")


def validate(raw: Mapping[str, Any]) -> LabConfig:
    """Check settings whose defaults are filled and return their :class:`LabConfig`, or raise
    :class:`ConfigError` with every problem. Nothing is filled here: an unset value is a problem."""
    problems = Problems()
    _unknown_settings(problems, raw)
    raw = {k: v for k, v in raw.items() if k in DEFAULTS}
    _check_texts(problems, raw)
    _check_names(problems, raw)
    profile = PROFILES.get(raw.get("profile")) if isinstance(raw.get("profile"), str) else None
    if profile is None:
        problems.add("profile", f"{shown(raw.get('profile'))} is unknown; use one of {', '.join(PROFILES)}")
    proxy = raw.get("kube_proxy_mode")
    if proxy not in PROXY_MODES:
        problems.add("kube_proxy_mode", f"{shown(proxy)} is unknown; use 'ipvs' or 'nftables'")

    numbers = {key: read_int(problems, raw, key, low, high) for key, low, high in (
        ("memory_mb", MEMORY_MIN_MB, 1024 * 1024), ("cpus", 1, CPUS_MAX), ("workers", 1, WORKERS_MAX),
        ("node_cidr_mask_ipv4", 8, 30), ("node_cidr_mask_ipv6", 64, 124), ("ready_timeout", 30, 24 * 3600))}
    nets = _read_networks(problems, raw)
    cache_dir, offline = _check_cache(problems, raw)
    if profile is not None:
        _check_profile(problems, profile, raw, nets)
    nodes = _nodes(problems, raw)
    _check_nodes(problems, nodes, nets["network_ipv4"], nets["network_ipv6"], nets["dhcp_ipv4_range"],
                 nets["dhcp_ipv6_range"])
    _check_ranges(problems, *(nets[k] for k in (
        "network_ipv4", "network_ipv6", "dhcp_ipv4_range", "dhcp_ipv6_range", "pod_subnets", "service_subnets",
        "docker_ipv6_cidr", "metallb_ipv4_range", "metallb_ipv6_range", "external_ipv4", "external_ipv6")), nodes)
    _check_sizes(problems, raw.get("domain"), nodes, nets["pod_subnets"], numbers["node_cidr_mask_ipv4"],
                 numbers["node_cidr_mask_ipv6"])

    if problems:
        raise ConfigError(problems)
    return LabConfig(
        name=raw["name"],
        profile=profile,
        box=raw["box"],
        box_url=raw.get("box_url"),
        libvirt_uri=raw["libvirt_uri"],
        libvirt_driver=raw["libvirt_driver"],
        storage_pool=raw["storage_pool"].strip(),
        memory_mb=numbers["memory_mb"],
        cpus=numbers["cpus"],
        state_dir=state_dir_path(raw["state_dir"]),
        domain=raw["domain"],
        nodes=nodes,
        node_cidr_mask_ipv4=numbers["node_cidr_mask_ipv4"],
        node_cidr_mask_ipv6=numbers["node_cidr_mask_ipv6"],
        runtime=raw["runtime"],
        kube_proxy_mode=proxy,
        ready_timeout=numbers["ready_timeout"],
        cache_dir=cache_dir,
        offline=offline,
        raw=dict(raw),
        **nets,
    )
