"""``python push_file.py SETTINGS_JSON URL SHA256 DEST``: put a pinned download on every node of the
lab the settings describe, the way lab.up's steps do before fetch.sh runs (the host fetches it once
into lab.cache_dir, then copies it over the lab's ssh); prints the run's log."""

from __future__ import annotations

import json
import sys

from lab import cache_steps, config, pipeline
from lab.profiles import Download


def main(settings: str, url: str, sha256: str, dest: str) -> None:
    cfg = config.load(json.loads(settings))
    ctx = pipeline.open_context(cfg, "push")
    for node in cfg.nodes:
        ctx.step = "push"
        cache_steps.push(ctx, node.name, Download(url=url, sha256=sha256), dest)
    print(ctx.log_path.read_text() if ctx.log_path.exists() else "")


if __name__ == "__main__":
    main(*sys.argv[1:])
