"""``lab.verify``: prove, check by check, that the lab is dual-stack end to end.

Public API::

    from lab.verify import run_checks, verify, write_json, write_junit, format_report, CHECKS
    report = run_checks(ctx, only=["pod-ips"], layer=None, out=sys.stdout)
    report.exit_code  # 0 when nothing failed
"""

from .model import CLUSTER, NETWORK, CheckResult, Finding, Report
from .registry import CHECK_NAMES, CHECKS, UnknownCheckError, select
from .runner import format_report, report_dict, run_checks, verify, write_json, write_junit
from .session import VerifyContext, host_run

__all__ = [
    "CHECKS", "CHECK_NAMES", "CLUSTER", "NETWORK", "CheckResult", "Finding", "Report", "UnknownCheckError",
    "VerifyContext", "format_report", "host_run", "report_dict", "run_checks", "select", "verify",
    "write_json", "write_junit",
]
