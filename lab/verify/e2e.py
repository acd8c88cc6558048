"""The optional ``--e2e`` tier: the upstream dual-stack e2e tests, run by hydrophone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, List, Optional

from .. import statedir
from .model import CheckResult, failed, passed, skipped
from .session import HostRun, host_run

E2E_NAME = "e2e-dual-stack"
E2E_DESCRIPTION = "upstream [Feature:IPv6DualStack] e2e tests (hydrophone), SCTP skipped"
FOCUS = r"\[Feature:IPv6DualStack\]"
SKIP = "SCTP"
E2E_TIMEOUT_S = 3600


def hydrophone_command(binary: str, kubeconfig: Path, output_dir: Path, kubernetes_version: str) -> List[str]:
    """hydrophone's flags (README / docs/flags-cli-ref.md): --focus, --skip, --kubeconfig,
    --output-dir, --conformance-image (pinned to the cluster's version)."""
    return [binary, "--focus", FOCUS, "--skip", SKIP, "--kubeconfig", str(kubeconfig),
            "--output-dir", str(output_dir), "--conformance-image", f"registry.k8s.io/conformance:v{kubernetes_version}"]


def run_e2e(cfg, kubeconfig: Optional[Path], *, which: Callable[[str], Optional[str]] = shutil.which,
            run: HostRun = None) -> CheckResult:
    """Run the dual-stack e2e focus with hydrophone if it is on PATH, else skip with the reason."""
    binary = which("hydrophone")
    if not binary:
        return skipped("hydrophone is not on PATH (go install sigs.k8s.io/hydrophone@latest)")
    if kubeconfig is None or not Path(kubeconfig).exists():
        return skipped(f"no kubeconfig on the host at {kubeconfig}; fetch it first")
    output_dir = Path(cfg.state_dir) / "e2e"
    output_dir.mkdir(parents=True, exist_ok=True)
    command = hydrophone_command(binary, Path(kubeconfig), output_dir, cfg.profile.kubernetes_version)
    runner = run or (lambda cmd: host_run(cmd, timeout=E2E_TIMEOUT_S))
    result = runner(command)
    statedir.record(cfg.state_dir, [p for p in output_dir.rglob("*") if p.is_file()])  # destroy removes them
    tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
    if result.ok:
        return passed(f"hydrophone: dual-stack e2e tests passed (results in {output_dir})")
    return failed(f"hydrophone exited {result.returncode}", "exit 0 (all focused tests pass)",
                  " | ".join(tail) or "no output", f"{output_dir}/e2e.log and junit_01.xml")
