"""The recipe's dual-stack edits to the upstream Calico manifest, made by parsing it.

:func:`edit_manifest` changes exactly what the recipe changes and nothing else:

* ConfigMap ``calico-config``, ``cni_network_config`` (JSON in a YAML block scalar): the
  ``calico-ipam`` object gets ``"assign_ipv4": "true"`` and ``"assign_ipv6": "true"``;
* DaemonSet ``calico-node``, container ``calico-node`` env: ``IP=autodetect``,
  ``IP6=autodetect``, ``IP_AUTODETECTION_METHOD`` / ``IP6_AUTODETECTION_METHOD`` pinned to the
  lab network, ``CALICO_IPV4POOL_CIDR`` / ``CALICO_IPV6POOL_CIDR`` = the pod subnets,
  ``FELIX_IPV6SUPPORT=true``.

How, without rewriting the file: YAML documents are split on their ``---`` lines and only the
two documents above are touched. In those, PyYAML's composer gives the exact text span of every
node; a value that must change has its span replaced by a double-quoted scalar, a missing env
entry is inserted as two lines after an existing entry, indented like its siblings. The CNI
JSON is walked by a small position-tracking JSON reader over the block scalar's text (JSON
ignores the block's indentation) and members are replaced or inserted the same way. Everything
else -- other documents, comments, key order, quoting, the commented-out sample pool -- is left
as it was, and :func:`edit_manifest` checks that by re-parsing its result.

IP autodetection must never see ``kube-ipvs0``: with kube-proxy in IPVS mode that dummy
interface holds every ClusterIP, externalIP and LoadBalancer address of the cluster, and the
lab's externalIPs and MetalLB ranges lie inside the lab network. ``cidr=<lab network>`` walks
the interfaces without calico/node's default exclude list (``FilteredEnumeration(nil, nil,
cidrs)`` in ``node/pkg/lifecycle/startup/autodetection/`` at v3.31.6), so a calico-node
restarted after the workloads step can take a LoadBalancer address as its node address.
Hence, per version:

* Calico with ``kubernetes-internal-ip`` and a kubelet that reports both families
  (``current``): that method for both families. It reads the Node's ``InternalIP`` of the
  family (``autoDetectUsingK8sInternalIP``), which the kubelet's ``--node-ip <v4>,<v6>``
  pins to the lab addresses.
* Calico 3.11 (``seed-2020``; methods ``first-found``, ``can-reach=``, ``interface=``,
  ``skip-interface=``, ``pkg/startup/startup.go`` at v3.11.3-node; the 1.17 kubelet reports
  no IPv6 InternalIP anyway): ``can-reach=<host's address on the lab network>``.
  ``ReachDestination`` (``pkg/startup/autodetection/reachaddr.go``) takes the local address
  of a UDP socket connected to that destination, which is the kernel's source address for
  the route to the gateway: the connected route of the lab NIC (IPv4: its ``src``; IPv6:
  RFC 6724 rule 5 prefers an address of the outgoing interface), never a ``/32`` or ``/128``
  on ``kube-ipvs0``, which carries no route. It then matches that exact address against the
  interfaces. ``tests/test_calico.py`` shows this in a network namespace with a populated
  ``kube-ipvs0``.

IPv6 egress: ``CALICO_IPV6POOL_NAT_OUTGOING`` defaults to false (``startup.go``, both
versions), and nothing routes the pod IPv6 pool back to the nodes: the pool is made
``natOutgoing`` like the IPv4 one.
"""

from __future__ import annotations

import json
import re
from typing import Dict, List, Optional, Tuple

import yaml

from .config import LabConfig

CONFIGMAP = ("ConfigMap", "calico-config")
DAEMONSET = ("DaemonSet", "calico-node")
CONTAINER = "calico-node"
CNI_KEY = "cni_network_config"

K8S_INTERNAL_IP = "kubernetes-internal-ip"
#: First Calico release whose calico/node knows ``kubernetes-internal-ip`` autodetection
#: (``K8S_INTERNAL_IP`` in ``node/pkg/lifecycle/startup/autodetection/autodetection_methods.go``
#: from tag v3.22.0; absent from every v3.20.x-node and v3.21.x-node tag).
K8S_INTERNAL_IP_SINCE = (3, 22)

_DOC_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$")


class ManifestError(ValueError):
    """The manifest does not have the structure the edits need."""


# --------------------------------------------------------------------------- what to set


def _version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def autodetection_methods(cfg: LabConfig) -> Tuple[str, str]:
    """(IPv4, IPv6) autodetection methods that pick the node's lab address and never ``kube-ipvs0``."""
    if (_version_tuple(cfg.profile.calico_version)[:2] >= K8S_INTERNAL_IP_SINCE
            and cfg.profile.kubelet_node_ip_dual):
        return K8S_INTERNAL_IP, K8S_INTERNAL_IP
    return f"can-reach={cfg.gateway_ipv4}", f"can-reach={cfg.gateway_ipv6}"


def env_settings(cfg: LabConfig) -> List[Tuple[str, str, Optional[str]]]:
    """(name, value, insert-after) of each calico-node env entry the recipe sets, in order."""
    v4_method, v6_method = autodetection_methods(cfg)
    return [
        ("IP", "autodetect", None),
        ("IP6", "autodetect", "IP"),
        ("IP_AUTODETECTION_METHOD", v4_method, "IP6"),
        ("IP6_AUTODETECTION_METHOD", v6_method, "IP_AUTODETECTION_METHOD"),
        ("CALICO_IPV4POOL_CIDR", str(cfg.pod_subnets[0]), "#CALICO_IPV4POOL_CIDR"),
        ("CALICO_IPV6POOL_CIDR", str(cfg.pod_subnets[1]), "CALICO_IPV4POOL_CIDR"),
        ("CALICO_IPV6POOL_NAT_OUTGOING", "true", "CALICO_IPV6POOL_CIDR"),
        ("FELIX_IPV6SUPPORT", "true", None),
        # Felix reports usage to projectcalico.org daily unless told not to (felix/config/config_params.go,
        # UsageReportingEnabled, default true, 3.11 and 3.31): a lab makes no call it was not asked for.
        ("FELIX_USAGEREPORTINGENABLED", "false", "FELIX_IPV6SUPPORT"),
    ]


IPAM_SETTINGS = (("assign_ipv4", "true"), ("assign_ipv6", "true"))


# --------------------------------------------------------------------------- documents


def split_documents(text: str) -> List[str]:
    """The manifest cut before each ``---`` line; ``"".join(result) == text``."""
    parts, current = [], []
    for line in text.splitlines(keepends=True):
        if _DOC_SEPARATOR.match(line.rstrip("\r\n")) and current:
            parts.append("".join(current))
            current = []
        current.append(line)
    if current:
        parts.append("".join(current))
    return parts


def _identity(doc_text: str) -> Optional[Tuple[str, str]]:
    try:
        data = yaml.safe_load(doc_text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    return data.get("kind"), (data.get("metadata") or {}).get("name")


def edit_manifest(text: str, cfg: LabConfig) -> str:
    """``text`` with the recipe's dual-stack edits; every other byte unchanged. Idempotent."""
    docs = split_documents(text)
    found = set()
    for i, doc in enumerate(docs):
        ident = _identity(doc)
        if ident == CONFIGMAP:
            docs[i] = _edit_configmap(doc)
            found.add(CONFIGMAP)
        elif ident == DAEMONSET:
            docs[i] = _edit_daemonset(doc, cfg)
            found.add(DAEMONSET)
    missing = {CONFIGMAP, DAEMONSET} - found
    if missing:
        raise ManifestError("the manifest has no " + " and no ".join(f"{k} {n}" for k, n in sorted(missing)))
    result = "".join(docs)
    check_edit(text, result, cfg)
    return result


# --------------------------------------------------------------------------- YAML node helpers


def _mapping_get(node, key: str):
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _path(node, *keys):
    for key in keys:
        node = _mapping_get(node, key)
        if node is None:
            return None
    return node


def _quote(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid double-quoted YAML scalar


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _next_line(text: str, pos: int) -> int:
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl + 1


def _node_end(node) -> int:
    """Where the text of ``node`` stops: the end of its last scalar.

    (A block collection's own end mark lies at the next token, past trailing comments.)
    """
    if isinstance(node, yaml.MappingNode):
        return max([_node_end(k) for k, _v in node.value] + [_node_end(v) for _k, v in node.value]
                   + [node.start_mark.index])
    if isinstance(node, yaml.SequenceNode):
        return max([_node_end(item) for item in node.value] + [node.start_mark.index])
    return node.end_mark.index


# --------------------------------------------------------------------------- DaemonSet env


def _env_node(doc: str):
    root = yaml.compose(doc)
    containers = _path(root, "spec", "template", "spec", "containers")
    if not isinstance(containers, yaml.SequenceNode):
        raise ManifestError("DaemonSet calico-node has no containers")
    for container in containers.value:
        name = _mapping_get(container, "name")
        if name is not None and name.value == CONTAINER:
            env = _mapping_get(container, "env")
            if not isinstance(env, yaml.SequenceNode) or env.flow_style:
                raise ManifestError("container calico-node has no block env list")
            return env
    raise ManifestError("DaemonSet calico-node has no container calico-node")


def _env_entries(env) -> Dict[str, yaml.MappingNode]:
    entries = {}
    for item in env.value:
        name = _mapping_get(item, "name")
        if name is not None:
            entries[name.value] = item
    return entries


def _commented_sample_end(doc: str, env, name: str) -> Optional[int]:
    """End of the commented-out ``# - name: <name>`` / ``#   value: ...`` sample in the env list."""
    start = env.start_mark.index
    end = _node_end(env)
    lines = doc[start:end].splitlines(keepends=True)
    pos = start
    for i, line in enumerate(lines):
        if line.strip() == f"# - name: {name}" and i + 1 < len(lines) and lines[i + 1].strip().startswith("#   value:"):
            return pos + len(line) + len(lines[i + 1])
        pos += len(line)
    return None


def _set_env(doc: str, name: str, value: str, after: Optional[str]) -> str:
    env = _env_node(doc)
    entries = _env_entries(env)
    entry = entries.get(name)
    if entry is not None:
        current = _mapping_get(entry, "value")
        if current is None:
            raise ManifestError(f"env {name} has no plain value to set (valueFrom?)")
        if isinstance(current, yaml.ScalarNode) and current.value == value:
            return doc
        return doc[:current.start_mark.index] + _quote(value) + doc[current.end_mark.index:]

    if not env.value:
        raise ManifestError("container calico-node has an empty env list")
    first = env.value[0].start_mark.index  # the entry's mapping starts after its "- "
    before = doc[_line_start(doc, first):first].rstrip()
    if not before.endswith("-"):
        raise ManifestError("calico-node env entries are not block sequence items")
    column = len(before) - 1
    new = f"{' ' * column}- name: {name}\n{' ' * (column + 2)}value: {_quote(value)}\n"
    where = None
    if after and after.startswith("#"):
        where = _commented_sample_end(doc, env, after[1:])
    elif after and after in entries:
        where = _next_line(doc, _node_end(entries[after]))
    if where is None:  # append after the last entry
        where = _next_line(doc, _node_end(env.value[-1]))
    return doc[:where] + new + doc[where:]


def _edit_daemonset(doc: str, cfg: LabConfig) -> str:
    for name, value, after in env_settings(cfg):
        doc = _set_env(doc, name, value, after)
    return doc


# --------------------------------------------------------------------------- ConfigMap CNI JSON


class _Json:
    """A JSON reader that records spans; accepts bare ``__PLACEHOLDER__`` values like ``__CNI_MTU__``."""

    _BARE = re.compile(r"__[A-Z0-9_]+__|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
    _WS = re.compile(r"\s*")

    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos

    def ws(self):
        self.pos = self._WS.match(self.text, self.pos).end()

    def value(self):
        """Returns (start, end, kind, payload); payload: members for objects, items for arrays."""
        self.ws()
        start, ch = self.pos, self.text[self.pos]
        if ch == "{":
            self.pos += 1
            members = []
            self.ws()
            if self.text[self.pos] == "}":
                self.pos += 1
                return start, self.pos, "object", members
            while True:
                self.ws()
                key = self.value()
                if key[2] != "string":
                    raise ManifestError("CNI config: object key is not a string")
                self.ws()
                if self.text[self.pos] != ":":
                    raise ManifestError("CNI config: ':' expected")
                self.pos += 1
                val = self.value()
                members.append((json.loads(self.text[key[0]:key[1]]), key, val))
                self.ws()
                if self.text[self.pos] == ",":
                    self.pos += 1
                    continue
                if self.text[self.pos] == "}":
                    self.pos += 1
                    return start, self.pos, "object", members
                raise ManifestError("CNI config: ',' or '}' expected")
        if ch == "[":
            self.pos += 1
            items = []
            self.ws()
            if self.text[self.pos] == "]":
                self.pos += 1
                return start, self.pos, "array", items
            while True:
                items.append(self.value())
                self.ws()
                if self.text[self.pos] == ",":
                    self.pos += 1
                    continue
                if self.text[self.pos] == "]":
                    self.pos += 1
                    return start, self.pos, "array", items
                raise ManifestError("CNI config: ',' or ']' expected")
        if ch == '"':
            end = self.pos + 1
            while self.text[end] != '"':
                end += 2 if self.text[end] == "\\" else 1
            self.pos = end + 1
            return start, self.pos, "string", None
        match = self._BARE.match(self.text, self.pos)
        if not match:
            raise ManifestError(f"CNI config: unexpected {self.text[self.pos:self.pos + 20]!r}")
        self.pos = match.end()
        return start, self.pos, "bare", None


def _ipam_objects(tree, text: str) -> list:
    """Every ``ipam`` object of type ``calico-ipam`` in the parsed CNI config."""
    found = []

    def walk(node):
        _start, _end, kind, payload = node
        if kind == "object":
            for key, _key_span, val in payload:
                if key == "ipam" and val[2] == "object":
                    types = [v for k2, _ks, v in val[3] if k2 == "type"]
                    if types and json.loads(text[types[0][0]:types[0][1]]) == "calico-ipam":
                        found.append(val)
                walk(val)
        elif kind == "array":
            for item in payload:
                walk(item)

    walk(tree)
    return found


def _edit_cni(doc: str, start: int, end: int) -> str:
    """Set the ipam members inside the block scalar text ``doc[start:end]``."""
    for key, value in IPAM_SETTINGS:
        region = doc[:end]
        first = region.find("{", start)
        if first < 0:
            raise ManifestError("cni_network_config holds no JSON object")
        found = _ipam_objects(_Json(region, first).value(), region)
        if len(found) != 1:
            raise ManifestError(f"cni_network_config has {len(found)} calico-ipam objects; expected one")
        obj_start, obj_end, _kind, members = found[0]
        existing = [m for m in members if m[0] == key]
        if existing:
            vstart, vend = existing[0][2][0], existing[0][2][1]
            if doc[vstart:vend] == _quote(value):
                continue
            doc = doc[:vstart] + _quote(value) + doc[vend:]
        else:
            last_key, last_val = members[-1][1], members[-1][2]
            key_line = _line_start(doc, last_key[0])
            member = f"{_quote(key)}: {_quote(value)}"
            if _line_start(doc, obj_start) == key_line:  # single-line object
                insert = f", {member}"
            else:
                indent = doc[key_line:last_key[0]]
                insert = f",\n{indent}{member}"
            doc = doc[:last_val[1]] + insert + doc[last_val[1]:]
        start, end = _cni_span(doc)  # the scalar grew: find its span again
    return doc


def _cni_span(doc: str) -> Tuple[int, int]:
    root = yaml.compose(doc)
    node = _path(root, "data", CNI_KEY)
    if not isinstance(node, yaml.ScalarNode):
        raise ManifestError(f"ConfigMap calico-config has no data.{CNI_KEY}")
    return node.start_mark.index, node.end_mark.index


def _edit_configmap(doc: str) -> str:
    start, end = _cni_span(doc)
    return _edit_cni(doc, start, end)


# --------------------------------------------------------------------------- verification


def cni_config(value: str) -> dict:
    """The CNI JSON with its bare ``__PLACEHOLDER__`` values read as strings."""
    return json.loads(re.sub(r'(?<=[:\[,\s])(__[A-Z0-9_]+__)(?=[\s,\]}])', r'"\1"', value))


def expected_objects(before: list, cfg: LabConfig) -> list:
    """What the documents of ``before`` must parse to after the edits (for :func:`check_edit`)."""
    import copy

    after = copy.deepcopy(before)
    for obj in after:
        if not isinstance(obj, dict):
            continue
        ident = (obj.get("kind"), (obj.get("metadata") or {}).get("name"))
        if ident == CONFIGMAP:
            conf = cni_config(obj["data"][CNI_KEY])
            for plugin in conf.get("plugins", [conf]):
                if isinstance(plugin.get("ipam"), dict) and plugin["ipam"].get("type") == "calico-ipam":
                    plugin["ipam"].update(dict(IPAM_SETTINGS))
            obj["data"][CNI_KEY] = conf
        elif ident == DAEMONSET:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container.get("name") != CONTAINER:
                    continue
                env = container["env"]
                for name, value, _after in env_settings(cfg):
                    for item in env:
                        if item.get("name") == name:
                            item["value"] = value
                            break
                    else:
                        env.append({"name": name, "value": value})
                container["env"] = sorted(env, key=lambda e: e["name"])
    return after


def normalise(objects: list) -> list:
    """Objects comparable across edits: CNI JSON parsed, calico-node env sorted by name."""
    import copy

    out = copy.deepcopy(objects)
    for obj in out:
        if not isinstance(obj, dict):
            continue
        ident = (obj.get("kind"), (obj.get("metadata") or {}).get("name"))
        if ident == CONFIGMAP and isinstance(obj["data"][CNI_KEY], str):
            obj["data"][CNI_KEY] = cni_config(obj["data"][CNI_KEY])
        elif ident == DAEMONSET:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                if container.get("name") == CONTAINER:
                    container["env"] = sorted(container["env"], key=lambda e: e["name"])
    return out


def check_edit(before: str, after: str, cfg: LabConfig) -> None:
    """Raise :class:`ManifestError` unless ``after`` is ``before`` with exactly the recipe's edits."""
    old_docs, new_docs = split_documents(before), split_documents(after)
    if len(old_docs) != len(new_docs):
        raise ManifestError("the edit changed the number of documents")
    for old, new in zip(old_docs, new_docs):
        if old != new and _identity(old) not in (CONFIGMAP, DAEMONSET):
            raise ManifestError(f"the edit changed a document it must not touch: {_identity(old)}")
    want = expected_objects(list(yaml.safe_load_all(before)), cfg)
    got = normalise(list(yaml.safe_load_all(after)))
    if normalise(want) != got:
        raise ManifestError("the edited manifest does not parse to the expected objects")
