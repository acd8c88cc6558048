"""Reading YAML the lab accepts: PyYAML's safe loader, bounded.

Used for every file of settings (:mod:`lab.sources`) and for ``lab.nodes`` given as text.
"""

from __future__ import annotations

import re

import yaml

from .errors import ConfigError
from .settings import shown

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
