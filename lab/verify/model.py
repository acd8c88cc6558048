"""Data of ``lab.verify``: findings, check results, checks and the report.

A check is split in two: *gathering* (commands on the nodes, ``kubectl``) and a pure
*evaluation* that turns what was gathered into :class:`Finding` objects. Findings become
one :class:`CheckResult` through :func:`result_from_findings`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

PASS = "pass"
FAIL = "fail"
SKIP = "skip"
STATUSES = (PASS, FAIL, SKIP)

NETWORK = "network"
CLUSTER = "cluster"
E2E = "e2e"
LAYERS = (NETWORK, CLUSTER)


@dataclass(frozen=True)
class Finding:
    """One thing an evaluation found wrong (or, with ``note``, worth saying but not wrong).

    ``problem`` is a short sentence naming the object (node, pod, Service) and what is
    wrong; ``expected``/``seen`` are what should be and what is; ``look_at`` is where to
    look or the likely fix. ``node``, ``pod``, ``family`` and ``address`` say where the
    problem was seen; ``error`` keeps the error text of the command that failed
    (``kubectl exec``, ssh).
    """

    problem: str
    expected: str = ""
    seen: str = ""
    look_at: str = ""
    note: bool = False
    node: str = ""
    pod: str = ""
    family: str = ""
    address: str = ""
    error: str = ""

    def where(self) -> str:
        """``node X, pod Y, IPv6 fd00::1``: the parts that are known, or empty."""
        parts = [f"node {self.node}" if self.node else "", f"pod {self.pod}" if self.pod else "",
                 " ".join(p for p in (self.family, self.address) if p)]
        return ", ".join(p for p in parts if p)

    def as_dict(self) -> dict:
        """The finding as plain data (JSON)."""
        return {"problem": self.problem, "expected": self.expected, "seen": self.seen, "look_at": self.look_at,
                "node": self.node, "pod": self.pod, "family": self.family, "address": self.address,
                "error": self.error, "note": self.note}


def note(text: str) -> Finding:
    """A finding that does not fail the check: an expected limitation, said out loud."""
    return Finding(problem=text, note=True)


@dataclass
class CheckResult:
    """The outcome of one check."""

    status: str
    message: str
    expected: str = ""
    seen: str = ""
    look_at: str = ""
    notes: List[str] = field(default_factory=list)
    findings: List[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True for a pass (with or without notes)."""
        return self.status == PASS

    @property
    def problems(self) -> List[Finding]:
        """The findings that fail the check (notes left out)."""
        return [f for f in self.findings if not f.note]


def passed(message: str, notes: Sequence[str] = ()) -> CheckResult:
    """A passing result."""
    return CheckResult(PASS, message, notes=list(notes))


def skipped(reason: str) -> CheckResult:
    """A skipped result; ``reason`` says why."""
    return CheckResult(SKIP, reason)


def failed(message: str, expected: str = "", seen: str = "", look_at: str = "") -> CheckResult:
    """A failing result."""
    return CheckResult(FAIL, message, expected, seen, look_at,
                       findings=[Finding(message, expected, seen, look_at)])


def unreachable(where: str, what: str, expected: str, look_at: str = "is the VM up? `invoke lab.status`",
                error: str = "", node: str = "") -> Finding:
    """The finding for a probe that produced no output at all on ``where`` (``error``: its stderr)."""
    return Finding(f"{where}: could not run {what}", expected, "no answer", look_at, node=node, error=error.strip())


def result_from_findings(findings: Sequence[Finding], ok_message: str) -> CheckResult:
    """Fold findings into one result: any non-note finding fails the check.

    The message is the problem itself when there is one, else how many there are; every
    finding stays in ``findings`` with its own expected, seen and where-to-look, and
    ``expected``/``seen``/``look_at`` are those of the first problem (never merged).
    """
    problems = [f for f in findings if not f.note]
    notes = [f.problem for f in findings if f.note]
    if not problems:
        return CheckResult(PASS, ok_message, notes=notes, findings=list(findings))
    first = problems[0]
    message = first.problem if len(problems) == 1 else f"{len(problems)} problems"
    return CheckResult(FAIL, message, expected=first.expected, seen=first.seen, look_at=first.look_at,
                       notes=notes, findings=list(findings))


@dataclass(frozen=True)
class Check:
    """One entry of the registry: a name, a layer, a description and the function."""

    name: str
    layer: str
    description: str
    run: Callable[..., CheckResult]
    needs_clients: bool = False


@dataclass
class Outcome:
    """A check's result as reported: the check's identity plus its result and timing."""

    name: str
    layer: str
    description: str
    result: CheckResult
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """pass, fail or skip."""
        return self.result.status


@dataclass
class Report:
    """Every outcome of one ``lab.verify`` run, in order."""

    outcomes: List[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        """How many outcomes have ``status``."""
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def passed(self) -> int:
        """Number of passing checks."""
        return self.count(PASS)

    @property
    def failed(self) -> int:
        """Number of failing checks."""
        return self.count(FAIL)

    @property
    def skipped(self) -> int:
        """Number of skipped checks."""
        return self.count(SKIP)

    @property
    def ok(self) -> bool:
        """True when nothing failed and the run was not interrupted."""
        return self.failed == 0 and not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 when every check passed or was skipped, 1 otherwise."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        """``N passed, N failed, N skipped``."""
        return f"{self.passed} passed, {self.failed} failed, {self.skipped} skipped"


# --------------------------------------------------------------------------- address helpers


def ip(value) -> Optional[ipaddress._BaseAddress]:  # noqa: SLF001
    """``value`` as an address, or None when it is not one (a '/prefix' is dropped)."""
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("/")[0].split("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def family(value) -> Optional[int]:
    """4 or 6 for an address (or CIDR), None for anything else."""
    if value is None:
        return None
    text = str(value).strip()
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=False).version
        except ValueError:
            return None
    address = ip(text)
    return address.version if address else None


def family_name(version: Optional[int]) -> str:
    """``IPv4``/``IPv6`` for 4/6."""
    return {4: "IPv4", 6: "IPv6"}.get(version, "unknown family")


def family_of_name(name: str) -> Optional[int]:
    """4/6 for ``IPv4``/``IPv6`` (Kubernetes' spelling)."""
    return {"IPv4": 4, "IPv6": 6}.get(name)


def in_networks(value, networks) -> bool:
    """True when the address or CIDR ``value`` lies inside one of ``networks``."""
    text = str(value)
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return any(net.version == n.version and net.subnet_of(n) for n in networks)
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address.version == n.version and address in n for n in networks)


def url_host(address) -> str:
    """An address ready for a URL: IPv6 in brackets."""
    parsed = ip(address)
    return f"[{parsed}]" if parsed is not None and parsed.version == 6 else str(address)


def kube_minor(cfg) -> int:
    """The Kubernetes minor version of the profile (17 for 1.17.2)."""
    return int(cfg.profile.kubernetes_version.split(".")[1])


def lab_families(cfg) -> List[int]:
    """The address families the lab is configured for (4 and 6: every pod subnet's)."""
    return sorted({net.version for net in cfg.pod_subnets})
