"""The admin kubeconfig the lab hands out, named after the lab.

kubeadm names every admin kubeconfig alike (cluster ``kubernetes``, user ``kubernetes-admin``,
context ``kubernetes-admin@kubernetes``), so two labs' files cannot be merged
(``KUBECONFIG=a:b``): kubectl keeps the first of each name. :func:`for_lab` renames the
cluster, the user and the context to ``dslab-<lab name>``, as kind names its ``kind-<name>``.
"""

from __future__ import annotations

from typing import Optional

import yaml

from .errors import LabError

PREFIX = "dslab-"


def context_name(lab_name: str) -> str:
    """The name of the lab's cluster, user and context in its kubeconfig."""
    return PREFIX + lab_name


def _entry(entries, name: Optional[str], kind: str) -> dict:
    """The entry of ``entries`` called ``name`` (the only one when ``name`` is None)."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LabError(f"the admin kubeconfig has no list of {kind}s")
    found = [e for e in entries if name is None or e.get("name") == name]
    if len(found) != 1 or not isinstance(found[0].get(kind), dict):
        raise LabError(f"the admin kubeconfig has no single {kind} {name or ''}".rstrip())
    return found[0]


def for_lab(text: str, lab_name: str) -> str:
    """``text`` (a kubeconfig) with only its current context, whose cluster, user and context are
    renamed :func:`context_name`; credentials and server are kept as they are."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LabError(f"the admin kubeconfig is not YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise LabError("the admin kubeconfig is not a mapping")
    current = data.get("current-context")
    context = _entry(data.get("contexts"), current if isinstance(current, str) and current else None, "context")
    cluster = _entry(data.get("clusters"), context["context"].get("cluster"), "cluster")
    user = _entry(data.get("users"), context["context"].get("user"), "user")
    name = context_name(lab_name)
    data["clusters"] = [{"name": name, "cluster": cluster["cluster"]}]
    data["users"] = [{"name": name, "user": user["user"]}]
    data["contexts"] = [{"name": name, "context": {**context["context"], "cluster": name, "user": name}}]
    data["current-context"] = name
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1 << 16)
