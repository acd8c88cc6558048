"""Typed exceptions raised inside ``lab``; only the task layer turns them into exits."""

from __future__ import annotations


class LabError(Exception):
    """Base class of every error the lab reports to its user."""


class ConfigError(LabError):
    """The lab configuration has one or more problems.

    ``problems`` holds one line per problem, each naming the setting and the fix.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PreflightError(LabError):
    """The host is not ready for the lab (missing tool, unreachable libvirt, ...)."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StepError(LabError):
    """A step of ``lab.up`` failed; ``log`` points at the log file to read."""

    def __init__(self, step, reason, log=None):
        self.step = step
        self.reason = reason
        self.log = log
        where = f" (see {log})" if log else ""
        super().__init__(f"{step}: {reason}{where}")
