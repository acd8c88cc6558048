"""What every step puts on a node before it runs a script there: ``provision/`` and the node's env file."""

from __future__ import annotations

from . import nodeenv
from .config import Node
from .render import PROVISION_DIR


def upload_inputs(ctx, node: Node) -> None:
    """Copy ``provision/`` and the node's env file to ``node`` (over the context's runner)."""
    ctx.runner.put_tree(node.name, PROVISION_DIR, f"{nodeenv.REMOTE_DIR}/provision")
    ctx.runner.put_text(node.name, nodeenv.env_file_text(nodeenv.node_env(ctx.cfg, node)), nodeenv.ENV_FILE)
