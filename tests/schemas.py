"""Validate Kubernetes objects against the real API schemas of a Kubernetes version.

The schemas come from ``kubernetes-validate`` (PyPI): release 1.37.0 carries 1.25-1.37 and is
the normal test dependency; release 1.21.0 carries 1.10-1.21 (used for 1.17, the ``seed-2020``
profile). Both cannot live in one environment, so 1.21.0 is installed into its own directory
(:data:`KV121_DIR`, by :func:`install_kv121`) and run in a subprocess with that directory first
on ``PYTHONPATH``.

``validate_objects(objects, "1.17")`` -> list of error strings (empty: all valid). Strict
schemas are used: unknown fields are errors. An object whose kind/apiVersion the schema set
does not know is an error too, never silently skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
#: Where kubernetes-validate 1.21.0 is installed (``pip install --target``).
KV121_DIR = Path(os.environ.get("DSLAB_KV121_DIR", REPO / ".cache" / "kv121"))
KV121_REQUIREMENTS = ["kubernetes-validate==1.21.0", "setuptools<81"]  # 1.21.0 imports pkg_resources
#: Newest Kubernetes minor the 1.21.0 release has schemas for.
KV121_MAX = (1, 21)


def install_kv121(target: Path = KV121_DIR) -> List[str]:
    """Install kubernetes-validate 1.21.0 into ``target`` (no shell); returns the command run."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--target", str(target), *KV121_REQUIREMENTS]
    subprocess.run(cmd, check=True)
    return cmd


def kv121_available(target: Path = KV121_DIR) -> bool:
    """True when :func:`install_kv121` has been run into ``target``."""
    return (target / "kubernetes_validate" / "__init__.py").is_file()


def _minor(version: str):
    return tuple(int(p) for p in version.lstrip("v").split(".")[:2])


_RUNNER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import kubernetes_validate as kv
from kubernetes_validate import utils
objects, version = json.load(sys.stdin)
errors = []
for i, obj in enumerate(objects):
    ident = "%s %s/%s" % (i, obj.get("kind"), (obj.get("metadata") or {}).get("name"))
    try:
        kv.validate(obj, version, strict=True)
    except utils.SchemaNotFoundError as e:
        errors.append("%s: no schema (%s)" % (ident, e.message))
    except Exception as e:
        errors.append("%s: %s" % (ident, str(e).splitlines()[0]))
print(json.dumps({"file": kv.__file__, "errors": errors}))
"""


def validate_objects(objects: List[dict], k8s_version: str) -> List[str]:
    """Errors of ``objects`` against the strict API schemas of Kubernetes ``k8s_version``."""
    if _minor(k8s_version) <= KV121_MAX:
        if not kv121_available():
            raise RuntimeError(
                f"kubernetes-validate 1.21.0 is not installed in {KV121_DIR}; "
                "run: python -c 'import tests.schemas as s; s.install_kv121()'"
            )
        env = dict(os.environ, PYTHONPATH=str(KV121_DIR))
        proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps([objects, k8s_version]),
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubernetes-validate 1.21.0 failed: {proc.stderr.strip()}")
        result = json.loads(proc.stdout)
        if not result["file"].startswith(str(KV121_DIR)):
            raise RuntimeError(f"expected kubernetes-validate from {KV121_DIR}, got {result['file']}")
        return result["errors"]

    import kubernetes_validate as kv
    from kubernetes_validate import utils

    errors = []
    for i, obj in enumerate(objects):
        ident = f"{i} {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kv.validate(obj, k8s_version, strict=True)
        except utils.SchemaNotFoundError as e:
            errors.append(f"{ident}: no schema ({e.message})")
        except Exception as e:  # noqa: BLE001 - report every validation failure as text
            errors.append(f"{ident}: {str(e).splitlines()[0]}")
    return errors


if __name__ == "__main__":  # python tests/schemas.py install
    if sys.argv[1:] == ["install"]:
        print(" ".join(install_kv121()))
    else:
        sys.exit("usage: python tests/schemas.py install")
