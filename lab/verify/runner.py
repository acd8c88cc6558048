"""Run the checks, print one line each, write JSON and JUnit reports.

``run_checks(ctx, only, layer)`` returns a :class:`~lab.verify.model.Report`; the task
prints as it goes (``out``), writes ``--json``/``--junit`` files with :func:`write_json`
and :func:`write_junit`, and exits with ``report.exit_code``. Every pod and Service verify
labels is removed in a ``finally`` that also runs on Ctrl-C and SIGTERM, shielded from a second one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TextIO

from ..errors import LabError
from .e2e import E2E_DESCRIPTION, E2E_NAME, run_e2e
from .model import E2E, FAIL, PASS, SKIP, CheckResult, Finding, Outcome, Report, failed
from .registry import select
from .session import CommandTimeout, HostRun, VerifyContext, host_run, shielded

log = logging.getLogger(__name__)

MARKS = {PASS: "✓", FAIL: "✗"}
INDENT = "    "


# --------------------------------------------------------------------------- lines


def problems_of(result: CheckResult) -> List[Finding]:
    """The findings that fail ``result``; a failed result made without findings is its own one."""
    if result.problems:
        return result.problems
    if result.status == FAIL:
        return [Finding(result.message, result.expected, result.seen, result.look_at)]
    return []


def finding_lines(finding: Finding, indent: str = INDENT) -> List[str]:
    """``expected:``, ``seen:``, ``where:`` (node, pod, family, address), ``error:`` (the
    command's own error text, every line) and ``look at:`` of one finding."""
    lines = [f"{indent}expected: {finding.expected or '-'}", f"{indent}seen: {finding.seen or '-'}"]
    if finding.where():
        lines.append(f"{indent}where: {finding.where()}")
    error = [line.rstrip() for line in (finding.error or "").strip().splitlines() if line.strip()]
    if error:
        lines.append(f"{indent}error: {error[0]}")
        lines += [f"{indent}       {line}" for line in error[1:]]
    lines.append(f"{indent}look at: {finding.look_at or '-'}")
    return lines


def format_outcome(outcome: Outcome) -> List[str]:
    """The lines of one outcome: ``✓ name — message``, or ``- name skipped: reason``, or
    ``✗ name — message`` followed by every problem: with one, its indented ``expected:``,
    ``seen:``, ``where:``, ``error:`` and ``look at:``; with more, each numbered with its
    own. Notes follow as indented ``note:`` lines."""
    result = outcome.result
    if result.status == SKIP:
        lines = [f"- {outcome.name} skipped: {result.message}"]
    else:
        lines = [f"{MARKS[result.status]} {outcome.name} — {result.message}"]
    problems = problems_of(result)
    if len(problems) == 1:
        lines += finding_lines(problems[0])
    else:
        for number, finding in enumerate(problems, 1):
            label = f"{INDENT}{number}. "
            lines.append(label + finding.problem)
            lines += finding_lines(finding, " " * len(label))
    lines += [f"{INDENT}note: {n}" for n in result.notes]
    return lines


def format_report(report: Report) -> str:
    """Every outcome's lines, then the summary line ``N passed, N failed, N skipped``."""
    lines = [line for outcome in report.outcomes for line in format_outcome(outcome)]
    if report.interrupted:
        lines.append("interrupted: the remaining checks did not run")
    lines.append(report.summary())
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt while checks run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_one(check, vctx) -> CheckResult:
    try:
        return check.run(vctx)
    except CommandTimeout as exc:
        return failed(f"timed out: {exc}", f"an answer within {exc.seconds:.0f} s", "no answer in time",
                      "is the control plane overloaded or unreachable? `invoke lab.status`; the verify log in <state_dir>/logs/")
    except LabError as exc:
        return CheckResult(FAIL, f"could not gather: {exc}", "the check's inputs", str(exc).splitlines()[0] if str(exc) else "",
                           "is the cluster up? `invoke lab.status`")
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        log.debug("check %s crashed:\n%s", check.name, traceback.format_exc())
        return CheckResult(FAIL, f"check crashed: {type(exc).__name__}: {exc}", "a result", "an exception",
                           "a bug in lab/verify (run with debug logging for the traceback)")


def run_checks(ctx, only: Optional[Sequence[str]] = None, layer: Optional[str] = None, *,
               e2e: bool = False, kubeconfig: Optional[Path] = None, out: Optional[TextIO] = None,
               host: HostRun = host_run, clock: Callable[[], float] = time.monotonic) -> Report:
    """Run the selected checks against the lab behind ``ctx`` and return the report.

    ``only``: check names (list or comma-separated string); ``layer``: ``network`` or
    ``cluster``; unknown names raise :class:`~lab.verify.registry.UnknownCheckError`
    (one line listing the valid names) before anything runs. ``e2e`` adds the hydrophone
    tier (``kubeconfig``: the host-side kubeconfig). With ``out`` each check's lines are
    written as it finishes, then the summary. ``host`` runs host commands (tests inject a
    fake). Once verify may have created an object, every pod and Service it labels is
    deleted at the end, on failure, on Ctrl-C and on SIGTERM; an interrupt is re-raised
    after cleanup.
    """
    checks = select(only, layer)
    vctx = ctx if isinstance(ctx, VerifyContext) else VerifyContext(ctx, host_run=host)
    report = Report()

    def emit(outcome: Outcome):
        report.outcomes.append(outcome)
        if out is not None:
            for line in format_outcome(outcome):
                print(line, file=out, flush=True)

    try:
        with _sigterm_as_interrupt():
            for check in checks:
                start = clock()
                result = _run_one(check, vctx)
                emit(Outcome(check.name, check.layer, check.description, result, clock() - start))
            if e2e:
                start = clock()
                result = run_e2e(vctx.cfg, kubeconfig, run=None if host is host_run else host)
                emit(Outcome(E2E_NAME, E2E, E2E_DESCRIPTION, result, clock() - start))
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        if vctx.objects_created:
            with shielded():
                done = vctx.cleanup_objects()
                if not done.ok:
                    log.warning("could not delete the pods and Services of lab.verify: %s",
                                (done.stderr or done.stdout).strip())
        if out is not None:
            if report.interrupted:
                print("interrupted: the remaining checks did not run", file=out, flush=True)
            print(report.summary(), file=out, flush=True)
    return report


# --------------------------------------------------------------------------- writers


def report_dict(report: Report) -> dict:
    """The report as plain data (what ``--json`` writes)."""
    return {
        "summary": {"passed": report.passed, "failed": report.failed, "skipped": report.skipped,
                    "interrupted": report.interrupted, "ok": report.ok},
        "checks": [
            {
                "name": o.name,
                "layer": o.layer,
                "description": o.description,
                "status": o.status,
                "message": o.result.message,
                "expected": o.result.expected,
                "seen": o.result.seen,
                "look_at": o.result.look_at,
                "findings": [f.as_dict() for f in problems_of(o.result)],
                "notes": list(o.result.notes),
                "seconds": round(o.seconds, 3),
            }
            for o in report.outcomes
        ],
    }


def write_json(report: Report, path) -> Path:
    """Write the JSON report to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_dict(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def junit_tree(report: Report, suite_name: str = "dslab.verify") -> ET.ElementTree:
    """A JUnit XML tree: ``testsuites/testsuite/testcase`` with ``failure``/``skipped``."""
    root = ET.Element("testsuites", {"name": suite_name, "tests": str(len(report.outcomes)),
                                     "failures": str(report.failed), "errors": "0", "skipped": str(report.skipped),
                                     "time": f"{sum(o.seconds for o in report.outcomes):.3f}"})
    suite = ET.SubElement(root, "testsuite", {"name": suite_name, "tests": str(len(report.outcomes)),
                                              "failures": str(report.failed), "errors": "0",
                                              "skipped": str(report.skipped),
                                              "time": f"{sum(o.seconds for o in report.outcomes):.3f}"})
    for outcome in report.outcomes:
        case = ET.SubElement(suite, "testcase", {"classname": f"{suite_name}.{outcome.layer}", "name": outcome.name,
                                                 "time": f"{outcome.seconds:.3f}"})
        result = outcome.result
        if result.status == FAIL:
            failure = ET.SubElement(case, "failure", {"message": result.message, "type": "CheckFailed"})
            failure.text = "\n".join(format_outcome(outcome)[1:])
        elif result.status == SKIP:
            ET.SubElement(case, "skipped", {"message": result.message})
        if result.notes or result.status == PASS:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([result.message] + [f"note: {n}" for n in result.notes])
    return ET.ElementTree(root)


def write_junit(report: Report, path) -> Path:
    """Write the JUnit XML report to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = junit_tree(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path


def verify(ctx, only=None, layer=None, *, json_path=None, junit_path=None, e2e=False, kubeconfig=None,
           out: Optional[TextIO] = None, host: HostRun = host_run) -> Report:
    """What ``invoke lab.verify`` does: run, print, write the requested reports, return the report."""
    report = run_checks(ctx, only, layer, e2e=e2e, kubeconfig=kubeconfig, out=out, host=host)
    if json_path:
        write_json(report, json_path)
    if junit_path:
        write_junit(report, junit_path)
    return report
