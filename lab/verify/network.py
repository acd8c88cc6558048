"""Network-layer checks: they need only the machines (ssh), not Kubernetes.

Each check = ``gather_*`` (one command per node) + a pure ``evaluate_*`` over the text.
"""

from __future__ import annotations

import shlex
from typing import Dict, Mapping, Optional

from .model import CheckResult, Finding, family_name, result_from_findings, unreachable
from .parse import Section, parse_getent_ahosts, parse_ip_addr, parse_sections, sectioned_script

LOOK_ADDRESSES = ("`ip -o addr` on the node: the IPv4 comes from the DHCP reservation of the node's MAC "
                  "(network.xml in the state directory), the IPv6 from provision/network.sh "
                  "(re-run: sudo bash /opt/dslab/provision/network.sh /opt/dslab/node.env)")
LOOK_DNS = ("the lab network's DNS records (`virsh net-dumpxml <lab>_net`, network.xml in the state directory) "
            "and /etc/hosts on the node, which must not map node names (provision/network.sh removes such lines)")
LOOK_REACH = "the lab network (libvirt network XML, firewalld on the nodes, `ip -6 route` on both ends)"


# --------------------------------------------------------------------------- node-addresses


def evaluate_node_addresses(outputs: Mapping[str, Optional[Section]], cfg) -> list:
    """Every node has its planned IPv4 and IPv6, with the lab networks' prefix length, usable.

    ``outputs`` maps node name to the ``ip -o addr show`` section (None: the node could not
    be reached).
    """
    findings = []
    networks = {4: cfg.network_ipv4, 6: cfg.network_ipv6}
    for node in cfg.nodes:
        section = outputs.get(node.name)
        if section is None or section.returncode != 0:
            seen = section.output.strip() if section is not None else "no answer"
            findings.append(Finding(f"{node.name}: could not read its addresses",
                                    "`ip -o addr show` to run", seen or "no output",
                                    "is the VM up? `vagrant status` / `invoke lab.status`"))
            continue
        addresses = parse_ip_addr(section.output)
        for planned in (node.ipv4, node.ipv6):
            fam = family_name(planned.version)
            net = networks[planned.version]
            match = [a for a in addresses if a.address == planned]
            on_net = ", ".join(f"{a.address}/{a.prefixlen} on {a.interface}" for a in addresses
                               if a.version == planned.version and a.address in net) or "none"
            if not match:
                findings.append(Finding(f"{node.name}: missing its {fam} address {planned}",
                                        f"{planned}/{net.prefixlen} on the lab interface",
                                        f"{fam} addresses on {net}: {on_net}", LOOK_ADDRESSES))
                continue
            entry = match[0]
            bad = [flag for flag in entry.flags if flag in ("tentative", "dadfailed")]
            if bad:
                findings.append(Finding(f"{node.name}: {fam} address {planned} is {'/'.join(bad)}",
                                        f"{planned} usable (DAD done)", f"{planned} on {entry.interface} flags {' '.join(entry.flags)}",
                                        "dadfailed = another machine holds the address; tentative = wait or check the link"))
            if entry.prefixlen != net.prefixlen:
                findings.append(Finding(f"{node.name}: {fam} address {planned} has prefix /{entry.prefixlen}",
                                        f"{planned}/{net.prefixlen}", f"{planned}/{entry.prefixlen} on {entry.interface}",
                                        LOOK_ADDRESSES))
    return findings


def node_addresses(vctx) -> CheckResult:
    """Check: each node carries its planned IPv4 and IPv6 on the lab network."""
    outputs = {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, "ip -o addr show")
        outputs[node.name] = Section(result.returncode, result.stdout if result.ok else (result.stderr or result.stdout))
    findings = evaluate_node_addresses(outputs, vctx.cfg)
    return result_from_findings(findings, f"all {len(vctx.cfg.nodes)} nodes have their planned IPv4 and IPv6 on the lab network")


# --------------------------------------------------------------------------- node-dns


def dns_names(cfg) -> Dict[str, object]:
    """Every name to resolve (short and fqdn) -> the planned node."""
    names = {}
    for node in cfg.nodes:
        names[node.name] = node
        names[node.fqdn(cfg.domain)] = node
    return names


def dns_script(cfg) -> str:
    """One script resolving every node name with ``getent ahosts``."""
    return sectioned_script({name: f"getent ahosts {shlex.quote(name)}" for name in dns_names(cfg)})


def evaluate_node_dns(outputs: Mapping[str, Optional[str]], cfg, errors: Optional[Mapping[str, str]] = None) -> list:
    """Every node resolves every node name to exactly that node's planned IPv4 and IPv6.

    ``outputs`` maps the resolving node to its :func:`dns_script` output (None: unreachable;
    ``errors`` holds that node's ssh error text, kept in the finding).
    A loopback answer (Vagrant's ``127.0.0.1 <hostname>`` line) is reported: it makes the
    kubelet and etcd pick the wrong address.
    """
    findings = []
    names = dns_names(cfg)
    for node in cfg.nodes:
        text = outputs.get(node.name)
        if text is None:
            findings.append(unreachable(node.name, "getent", "getent ahosts output",
                                        error=(errors or {}).get(node.name, ""), node=node.name))
            continue
        sections = parse_sections(text)
        for name, target in names.items():
            section = sections.get(name)
            got = parse_getent_ahosts(section.output) if section is not None else []
            planned = {target.ipv4, target.ipv6}
            seen = ", ".join(str(a) for a in got) or "no answer"
            for address in (target.ipv4, target.ipv6):
                if address not in got:
                    findings.append(Finding(f"{node.name}: {name} does not resolve to its {family_name(address.version)} {address}",
                                            f"{name} -> {target.ipv4}, {target.ipv6}", f"{name} -> {seen}", LOOK_DNS))
            extra = [a for a in got if a not in planned]
            if extra:
                loop = [a for a in extra if a.is_loopback]
                hint = ("remove the `127.0.x.1 <hostname>` line Vagrant adds to /etc/hosts" if loop else LOOK_DNS)
                findings.append(Finding(f"{node.name}: {name} also resolves to {', '.join(str(a) for a in extra)}",
                                        f"{name} -> {target.ipv4}, {target.ipv6} only", f"{name} -> {seen}", hint))
    return findings


def node_dns(vctx) -> CheckResult:
    """Check: every node resolves every node name (short and fqdn) to both planned addresses."""
    script = dns_script(vctx.cfg)
    outputs, errors = {}, {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, script)
        outputs[node.name] = result.stdout if (result.ok or result.stdout) else None
        errors[node.name] = result.stderr
    findings = evaluate_node_dns(outputs, vctx.cfg, errors)
    count = len(vctx.cfg.nodes)
    return result_from_findings(findings, f"{count} nodes resolve all {2 * count} node names to their planned IPv4 and IPv6")


# --------------------------------------------------------------------------- node-reach


def ping_command(address) -> str:
    """A one-packet ping of ``address`` that works on CentOS 7 (ping6) and newer (ping -6)."""
    quoted = shlex.quote(str(address))
    if address.version == 4:
        return f"ping -c1 -W2 {quoted}"
    return (f"if command -v ping6 >/dev/null 2>&1; then ping6 -c1 -W2 {quoted}; "
            f"else ping -6 -c1 -W2 {quoted}; fi")


def reach_script(cfg, source) -> str:
    """One script pinging every other node over both families (by planned address)."""
    commands = {}
    for node in cfg.nodes:
        if node.name == source.name:
            continue
        for address in (node.ipv4, node.ipv6):
            commands[f"{node.name}/{address.version}"] = ping_command(address)
    return sectioned_script(commands)


def evaluate_node_reach(outputs: Mapping[str, Optional[str]], cfg, errors: Optional[Mapping[str, str]] = None) -> list:
    """Every node pings every other over IPv4 and IPv6 (a section per target and family);
    ``errors`` holds each node's ssh error text, kept in the finding of a node that gave no output."""
    findings = []
    for source in cfg.nodes:
        text = outputs.get(source.name)
        if text is None:
            findings.append(unreachable(source.name, "ping", "ping output",
                                        error=(errors or {}).get(source.name, ""), node=source.name))
            continue
        sections = parse_sections(text)
        for target in cfg.nodes:
            if target.name == source.name:
                continue
            for address in (target.ipv4, target.ipv6):
                section = sections.get(f"{target.name}/{address.version}")
                if section is not None and section.returncode == 0:
                    continue
                lines = (section.output.strip().splitlines() if section is not None else []) or ["no output"]
                findings.append(Finding(
                    f"{source.name} cannot ping {target.name} over {family_name(address.version)} ({address})",
                    f"a reply from {address}", f"{source.name}: {lines[-1]}", LOOK_REACH))
    return findings


def node_reach(vctx) -> CheckResult:
    """Check: every node pings every other node over both families."""
    outputs, errors = {}, {}
    for node in vctx.cfg.nodes:
        result = vctx.node_run(node.name, reach_script(vctx.cfg, node))
        outputs[node.name] = result.stdout if result.stdout else None
        errors[node.name] = result.stderr
    findings = evaluate_node_reach(outputs, vctx.cfg, errors)
    count = len(vctx.cfg.nodes)
    return result_from_findings(findings, f"every node pings the {count - 1} others over IPv4 and IPv6")
