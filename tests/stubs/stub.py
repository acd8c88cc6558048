#!/usr/bin/env python3
"""A stand-in for the system commands the provisioning scripts call.

The test links this file under each command's name (dnf, systemctl, ip, ...) into a
directory placed first on PATH. Every call appends its argv to ``$DSLAB_ROOT/.stub/calls.log``
(one JSON list per line) and acts on a fake system state kept in
``$DSLAB_ROOT/.stub/state.json`` and in files below ``$DSLAB_ROOT`` (``/proc/modules``,
``/proc/swaps``, ``/etc/hostname``...). ``state["fail"]`` lists command-line prefixes that exit 1;
``state["unavailable"]`` lists package names no repository has (yum skips them and exits 0 unless
told otherwise, or always with ``state["yum_ignores_setopt"]``; dnf and apt-get fail).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

ROOT = Path(os.environ["DSLAB_ROOT"])
STUB = ROOT / ".stub"
STATE_PATH = STUB / "state.json"
STUB_BIN = STUB / "bin"

#: Commands each package provides (created in .stub/bin, which is on PATH).
PROVIDES = {
    "docker-ce": ["dockerd"],
    "docker-ce-cli": ["docker"],
    "docker.io": ["dockerd", "docker"],
    "containerd.io": ["containerd"],
    "containerd": ["containerd"],
    "kubelet": ["kubelet"],
    "kubeadm": ["kubeadm"],
    "kubectl": ["kubectl"],
    "curl": ["curl"],
    "curl-minimal": ["curl"],
}
#: Installed package -> packages it conflicts with (EL9: curl-minimal and curl).
CONFLICTS = {"curl-minimal": ["curl"], "curl": ["curl-minimal"]}
#: systemd services each package brings (disabled and inactive after install).
SERVICES = {"docker-ce": ["docker"], "docker.io": ["docker"], "containerd.io": ["containerd"],
            "containerd": ["containerd"], "kubelet": ["kubelet"]}

CONTAINERD_DEFAULT = """version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.8"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      BinaryName = ""
      SystemdCgroup = false
"""


def load():
    return json.loads(STATE_PATH.read_text())


def save(state):
    tmp = STATE_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, STATE_PATH)


def unit(name):
    return name[:-8] if name.endswith(".service") else name


def rpm_split(spec):
    """``name[-version[-release]]`` -> (name, "version[-release]" or "")."""
    for i, char in enumerate(spec):
        if char == "-" and spec[i + 1:i + 2].isdigit():
            return spec[:i], spec[i + 1:]
    return spec, ""


def install(state, spec, family):
    if family == "debian":
        name, _, version = spec.partition("=")
        version = version.replace("*", "1.1") if version else "1.0-1"
    else:
        name, version = rpm_split(spec)
        version = version or "1.0"
    state["packages"][name] = version
    for command in PROVIDES.get(name, []):
        link = STUB_BIN / command
        if not link.exists():
            link.symlink_to(Path(__file__).resolve())
    for service in SERVICES.get(name, []):
        state["services"].setdefault(service, {"enabled": False, "active": False, "masked": False})


def rpm_matches(state, spec):
    """What ``rpm -q SPEC`` matches: NAME, NAME-VERSION or NAME-VERSION-RELEASE."""
    if spec in state["packages"]:
        return spec
    name, version = rpm_split(spec)
    have = state["packages"].get(name)
    if have is not None and (have == version or have.startswith(version + "-")):
        return name
    return None


def service(state, name):
    return state["services"].setdefault(unit(name), {"enabled": False, "active": False, "masked": False, "missing": True})


def main(argv):
    # Scripts may run two stubs at once (a pipe or process substitution): one at a time.
    with open(STUB / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return locked_main(argv)


def locked_main(argv):
    cmd = Path(argv[0]).name
    args = argv[1:]
    line = " ".join([cmd, *args])
    with open(STUB / "calls.log", "a") as log:
        log.write(json.dumps([cmd, *args]) + "\n")
    state = load()
    for prefix in state.get("fail", []):
        if line == prefix or line.startswith(prefix + " "):
            sys.stderr.write(f"{cmd}: simulated failure\n")
            return 1
    rc = globals().get("cmd_" + cmd.replace("-", "_"), lambda s, a: 0)(state, args)
    save(state)
    return rc or 0


def _rpm_install(state, args, manager):
    specs = [a for a in args[args.index("install") + 1:] if not a.startswith("-")]
    for spec in specs:
        name, _ = rpm_split(spec)
        for installed, conflicts in CONFLICTS.items():
            if installed in state["packages"] and name in conflicts:
                sys.stderr.write(f"Error: package {spec} conflicts with {installed} provided by {installed}\n"
                                 "(try to add '--allowerasing' to command line to replace conflicting packages)\n")
                return 1
    missing = [s for s in specs if rpm_split(s)[0] in state.get("unavailable", [])]
    strict = manager == "dnf" or ("--setopt=skip_missing_names_on_install=False" in args
                                  and not state.get("yum_ignores_setopt"))
    for spec in missing:
        sys.stderr.write(f"No package {spec} available.\n")
    if missing and strict:
        sys.stderr.write(f"Error: Unable to find a match: {' '.join(missing)}\n")
        return 1
    for spec in specs:
        if spec not in missing:
            install(state, spec, "el")
    return 0


def cmd_dnf(state, args):
    if "install" in args:
        return _rpm_install(state, args, "dnf")


def cmd_yum(state, args):
    if "install" in args:
        return _rpm_install(state, args, "yum")


def cmd_apt_get(state, args):
    if os.environ.get("DEBIAN_FRONTEND") != "noninteractive":
        sys.stderr.write("apt-get stub: DEBIAN_FRONTEND=noninteractive is required\n")
        return 3
    if "install" in args:
        specs = [a for a in args[args.index("install") + 1:] if not a.startswith("-")]
        missing = [s for s in specs if s.partition("=")[0] in state.get("unavailable", [])]
        if missing:
            sys.stderr.write(f"E: Unable to locate package {missing[0]}\n")
            return 100
        for spec in specs:
            install(state, spec, "debian")


def cmd_apt_mark(state, args):
    held = state.setdefault("held", [])
    if args[:1] == ["showhold"]:
        print("\n".join(held))
    elif args[:1] == ["hold"]:
        held.extend(a for a in args[1:] if a not in held)


def cmd_rpm(state, args):
    spec = args[-1]
    name = rpm_matches(state, spec)
    if name is None:
        if "--quiet" not in args:
            print(f"package {spec} is not installed")
        return 1
    if "--qf" in args:
        fmt = args[args.index("--qf") + 1]
        version, _, release = state["packages"][name].partition("-")
        sys.stdout.write(fmt.replace("%{VERSION}", version).replace("%{RELEASE}", release))
    return 0


def cmd_dpkg_query(state, args):
    name = args[-1]
    if name not in state["packages"]:
        sys.stderr.write(f"dpkg-query: no packages found matching {name}\n")
        return 1
    fmt = next(a for a in args if a.startswith("-f="))[3:]
    sys.stdout.write("install ok installed" if "Status" in fmt else state["packages"][name])
    return 0


def cmd_systemctl(state, args):
    quiet = "--quiet" in args
    words = [a for a in args if not a.startswith("-")]
    verb, names = words[0], words[1:]
    if verb == "is-enabled":
        s = service(state, names[0])
        text = "masked" if s.get("masked") else ("enabled" if s["enabled"] else "disabled")
        if not quiet:
            print(text)
        return 0 if text == "enabled" else 1
    if verb == "is-active":
        s = service(state, names[0])
        if not quiet:
            print("active" if s["active"] else "inactive")
        return 0 if s["active"] else 1
    if verb == "list-units":
        for name in state.get("swap_units", []):
            print(f"{name} loaded active active Swap")
        return 0
    if verb == "list-unit-files":
        for name in state.get("zram_unit_files", []):
            print(f"{name} static -")
        return 0
    for name in names:
        s = service(state, name)
        s.pop("missing", None)
        if verb == "enable":
            s["enabled"] = True
        elif verb == "disable":
            s["enabled"] = False
        elif verb in ("start", "restart"):
            s["active"] = True
        elif verb == "stop":
            s["active"] = False
        elif verb == "mask":
            s["masked"] = True
    return 0


def cmd_modprobe(state, args):
    with open(ROOT / "proc/modules", "a") as handle:
        handle.write(f"{args[-1]} 16384 0 - Live 0x0000000000000000\n")


def cmd_sysctl(state, args):
    values = state["sysctl"]
    if args[0] == "-n":
        if args[1] not in values:
            sys.stderr.write(f"sysctl: cannot stat /proc/sys/{args[1].replace('.', '/')}: No such file or directory\n")
            return 1
        print(values[args[1]])
    elif args[0] == "-w":
        key, _, value = args[1].partition("=")
        values[key] = value
        print(f"{key} = {value}")


def cmd_swapoff(state, args):
    swaps = ROOT / "proc/swaps"
    swaps.write_text(swaps.read_text().splitlines(True)[0])


def cmd_getenforce(state, args):
    print(state.get("selinux", "Disabled"))


def cmd_setenforce(state, args):
    state["selinux"] = "Permissive" if args[0] == "0" else "Enforcing"


def cmd_hostnamectl(state, args):
    if args[0] == "set-hostname":
        (ROOT / "etc/hostname").write_text(args[1] + "\n")


def cmd_ip(state, args):
    ifaces = state["interfaces"]
    if args[:4] == ["-o", "-4", "addr", "show"]:
        for i, (name, data) in enumerate(ifaces.items(), start=1):
            for addr in data.get("v4", []):
                print(f"{i}: {name}    inet {addr} brd 0.0.0.0 scope global dynamic {name}\\       valid_lft 3000sec preferred_lft 3000sec")
    elif args[:4] == ["-o", "-6", "addr", "show"]:
        name = args[args.index("dev") + 1]
        global_only = "global" in args
        index = list(ifaces).index(name) + 1
        for entry in ifaces[name].get("v6", []):
            if global_only and entry["addr"].startswith("fe80"):
                continue
            scope = "link" if entry["addr"].startswith("fe80") else "global"
            flags = (" " + entry["flags"]) if entry.get("flags") else ""
            print(f"{index}: {name}    inet6 {entry['addr']} scope {scope}{flags} \\       valid_lft forever preferred_lft forever")
    elif args[:3] == ["-6", "addr", "add"]:
        ifaces[args[5]].setdefault("v6", []).append({"addr": args[3], "flags": ""})
    elif args[:3] == ["-6", "addr", "del"]:
        ifaces[args[5]]["v6"] = [e for e in ifaces[args[5]]["v6"] if e["addr"] != args[3]]
    elif args[:4] == ["-6", "route", "show", "default"]:
        for route in state.get("routes6", []):
            print(route)
    elif args[:4] == ["-6", "route", "replace", "default"]:
        state["routes6"] = [f"default via {args[5]} dev {args[7]} metric 1024 pref medium"]
    else:
        sys.stderr.write(f"ip stub: unsupported {args}\n")
        return 2


def _nm_connection(nm, ref):
    """A connection by UUID or by ID (as nmcli resolves it)."""
    if ref in nm["connections"]:
        return nm["connections"][ref]
    return next(c for c in nm["connections"].values() if c.get("connection.id") == ref)


def cmd_nmcli(state, args):
    nm = state["nm"]
    if args[:1] == ["-g"] and args[2:4] == ["device", "show"]:
        uuid = nm["devices"].get(args[4], "")
        value = {"GENERAL.CON-UUID": uuid,
                 "GENERAL.CONNECTION": nm["connections"].get(uuid, {}).get("connection.id", "")}[args[1]]
        print(value)
    elif args[0] == "-g" and args[2:4] == ["connection", "show"]:
        conn = _nm_connection(nm, args[4])
        for key in args[1].split(","):
            print(conn.get(key, "").replace(":", "\\:"))
    elif args[:2] == ["connection", "modify"]:
        conn = _nm_connection(nm, args[2])
        rest = args[3:]
        for key, value in zip(rest[::2], rest[1::2]):
            conn[key] = value
    elif args[:2] in (["device", "reapply"], ["connection", "reload"]):
        pass
    else:
        sys.stderr.write(f"nmcli stub: unsupported {args}\n")
        return 2


def _curl_allows(args, option, url):
    """What curl's ``--proto``/``--proto-redir`` =LIST allows: every scheme, or those listed."""
    if option not in args:
        return True
    spec = args[args.index(option) + 1]
    return not spec.startswith("=") or url.partition(":")[0] in spec[1:].split(",")


def cmd_curl(state, args):
    url = next(a for a in args if a.startswith("http"))
    # state["redirects"]: URL -> the URL it redirects to (followed with -L, as curl does).
    follow = "--location" in args or any(a.startswith("-") and not a.startswith("--") and "L" in a for a in args)
    hops = [url]
    while follow and hops[-1] in state.get("redirects", {}) and len(hops) < 10:
        hops.append(state["redirects"][hops[-1]])
    if not _curl_allows(args, "--proto", hops[0]):
        sys.stderr.write(f'curl: (1) Protocol "{hops[0].partition(":")[0]}" not supported or disabled in libcurl\n')
        return 1
    for hop in hops[1:]:
        if not (_curl_allows(args, "--proto", hop) and _curl_allows(args, "--proto-redir", hop)):
            sys.stderr.write(f'curl: (1) Protocol "{hop.partition(":")[0]}" not supported or disabled in libcurl\n')
            return 1
    url = hops[-1]
    source = state.get("downloads", {}).get(url)
    data = Path(source).read_bytes() if source else f"fake download of {url}\n".encode()
    if "-o" in args:
        Path(args[args.index("-o") + 1]).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


#: What kubeadm writes on a node (init: in its certs, kubeconfig and control-plane phases;
#: join: kubelet-start), and what ``kubeadm reset`` removes again.
KUBEADM_INIT_FILES = ("etc/kubernetes/pki/ca.crt", "etc/kubernetes/admin.conf",
                      "etc/kubernetes/manifests/kube-apiserver.yaml")
KUBEADM_JOIN_FILES = ("etc/kubernetes/pki/ca.crt", "etc/kubernetes/kubelet.conf", "var/lib/kubelet/config.yaml")


def _write_all(paths):
    for rel in paths:
        (ROOT / rel).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / rel).write_text(f"fake {rel}\n")


#: The images ``kubeadm config images list`` names, unless ``state["kubeadm_images"]`` lists others.
KUBEADM_IMAGES = ("registry.k8s.io/kube-apiserver:v1.36.0", "registry.k8s.io/etcd:3.6.5-0", "registry.k8s.io/pause:3.10.1")


def cmd_kubeadm(state, args):
    if args[:3] == ["config", "images", "list"]:
        print("\n".join(state.get("kubeadm_images", KUBEADM_IMAGES)))
    elif args[:1] == ["init"]:
        _write_all(KUBEADM_INIT_FILES)
    elif args[:1] == ["join"]:
        _write_all(KUBEADM_JOIN_FILES)
    elif args[:1] == ["reset"]:
        for rel in {*KUBEADM_INIT_FILES, *KUBEADM_JOIN_FILES, "etc/kubernetes/bootstrap-kubelet.conf"}:
            (ROOT / rel).unlink(missing_ok=True)


def cmd_docker(state, args):
    """``docker image inspect REF...``: exit 0 when every REF is in ``state["images"]``."""
    if args[:2] == ["image", "inspect"]:
        return 0 if all(ref in state.get("images", []) for ref in args[2:]) else 1
    return 0


def cmd_kubectl(state, args):
    """``kubectl ... get KIND NAME``: exit 0 when ``KIND/NAME`` is in ``state["objects"]``."""
    words = [a for a in args if not a.startswith("-")]
    if "get" in words:
        kind, name = words[words.index("get") + 1:words.index("get") + 3]
        if f"{kind}/{name}" in state.get("objects", []):
            print(f"{kind}/{name}")
            return 0
        sys.stderr.write(f'Error from server (NotFound): {kind} "{name}" not found\n')
        return 1


#: ``passwd -S`` status of an account: what the box ships unless ``state["passwords"]`` says.
DEFAULT_PASSWORDS = {"root": "P", "vagrant": "P"}


def _passwords(state):
    return state.setdefault("passwords", dict(DEFAULT_PASSWORDS))


def cmd_passwd(state, args):
    """``passwd -S USER`` (status in the second field), ``passwd -l USER``."""
    users = _passwords(state)
    user = args[-1]
    if user not in users:
        sys.stderr.write(f"passwd: user '{user}' does not exist\n")
        return 1
    if args[:1] == ["-S"]:
        print(f"{user} {users[user]} 2024-05-20 0 99999 7 -1")
    elif args[:1] == ["-l"]:
        users[user] = state.get("locked_status", "L")


def cmd_usermod(state, args):
    """``usermod -L USER``: the status becomes ``state["locked_status"]`` (L; LK on EL)."""
    users = _passwords(state)
    if args[-1] not in users:
        sys.stderr.write(f"usermod: user '{args[-1]}' does not exist\n")
        return 6
    if "-L" in args:
        users[args[-1]] = state.get("locked_status", "L")


def cmd_sshd(state, args):
    """``sshd -T``: ``usepam`` from ``state["sshd_usepam"]`` (yes); ``sshd -t``: exit 0."""
    if args[:1] == ["-T"]:
        print("port 22")
        print(f"usepam {state.get('sshd_usepam', 'yes')}")
        print("passwordauthentication yes")


def cmd_containerd(state, args):
    if args[:2] == ["config", "default"]:
        sys.stdout.write(CONTAINERD_DEFAULT)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
