"""The status lines of a task: one object owns them, for ``up``, ``destroy`` and ``verify`` alike.

A task announces each of its steps (:meth:`Progress.start`), what a step waits for now
(:meth:`Progress.action`: which node, which rollout) and how the step ended (:meth:`Progress.done`,
:meth:`Progress.fail`, :meth:`Progress.skip`). On a terminal the running step is one line
redrawn in place, ten times a second, with a spinner, the current sub-action and the time
elapsed, replaced by the step's ``✓`` or ``✗`` line when it ends (as kind's status does);
elsewhere (a pipe, a CI log, ``TERM=dumb``) each start and each new sub-action is a line of
its own. ``verbose`` also streams the lines the run appends to its log; ``quiet`` prints the
failures only. Colour only on a terminal, and never with ``NO_COLOR`` set to a non-empty
value (https://no-color.org). Every line is redacted (:func:`lab.private.redact`).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, TextIO

from .private import redact

#: The spinner's frames, one every :data:`INTERVAL_S`.
FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
INTERVAL_S = 0.1
#: Mark and SGR colour of each kind of line.
MARKS = {"start": ("→", "36"), "ok": ("✓", "32"), "fail": ("✗", "31"), "skip": ("•", "2"), "warn": ("!", "33"),
         "plan": ("·", "36")}
CLEAR_LINE = "\r\033[K"
DEFAULT_WIDTH = 80


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def colour_wanted(stream, env: Mapping[str, str]) -> bool:
    """True when lines on ``stream`` may carry colour: a terminal that is not dumb, ``NO_COLOR`` unset or empty."""
    return _isatty(stream) and env.get("TERM") != "dumb" and not env.get("NO_COLOR")


class Progress:
    """The status lines of one task on ``stream`` (stderr by default); see the module docstring.

    ``animate``: redraw the running step from a background loop (tests drive :meth:`tick` instead).
    """

    def __init__(self, stream: Optional[TextIO] = None, *, verbose: bool = False, quiet: bool = False,
                 env: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.monotonic,
                 animate: bool = True):
        self.stream = stream or sys.stderr
        env = os.environ if env is None else env
        tty = _isatty(self.stream)
        self.verbose, self.quiet = verbose, quiet
        self.live = tty and env.get("TERM") != "dumb" and not quiet
        self.colour = colour_wanted(self.stream, env)
        self.clock = clock
        self.animate = animate
        self._lock = threading.RLock()
        self._step: Optional[str] = None
        self._started = 0.0
        self._action = ""
        self._frame = 0
        self._drawn = False
        self._log: Optional[Path] = None
        self._offset = 0
        self._partial = ""
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ lines

    def _mark(self, kind: str) -> str:
        mark, code = MARKS[kind]
        return f"\033[{code}m{mark}\033[0m" if self.colour else mark

    def _write(self, text: str) -> None:
        """Write a whole line above the running step's line (which is drawn again after it)."""
        with self._lock:
            if self._drawn:
                self.stream.write(CLEAR_LINE)
                self._drawn = False
            self.stream.write(redact(text) + "\n")
            if self.live and self._step is not None:
                self._draw()
            self.stream.flush()

    def _line(self, kind: str, text: str) -> None:
        self._write(f"{self._mark(kind)} {text}")

    def elapsed(self) -> float:
        """Seconds since the running step started (0 when none runs)."""
        return self.clock() - self._started if self._step is not None else 0.0

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or DEFAULT_WIDTH  # 0: a pty of no size
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns if self.stream is sys.stderr else DEFAULT_WIDTH

    def _draw(self) -> None:
        frame = FRAMES[self._frame % len(FRAMES)]
        if self.colour:
            frame = f"\033[{MARKS['start'][1]}m{frame}\033[0m"
        what = f": {self._action}" if self._action else ""
        tail = f" ({self.elapsed():.0f} s)"
        text = redact(f"{self._step}{what}")
        room = max(10, self._width() - 3 - len(tail))
        if len(text) > room:
            text = text[:room - 1] + "…"
        self.stream.write(f"{CLEAR_LINE}{frame} {text}{tail}")
        self._drawn = True

    # ------------------------------------------------------------------ steps

    def start(self, step: str) -> None:
        """A step begins: its start line (on a terminal, the spinner line)."""
        with self._lock:
            self._step, self._started, self._action = step, self.clock(), ""
            if self.live:
                self._draw()
                self.stream.flush()
            elif not self.quiet:
                self._line("start", step)
        self._run_loop()

    def action(self, text: str) -> None:
        """What the running step does now (which node, what it waits for); may be called from any thread."""
        with self._lock:
            if self._step is None or text == self._action:
                return
            self._action = text
            if self.live:
                self._draw()
                self.stream.flush()
            elif not self.quiet:
                self._write(f"  {self._step}: {text}")

    def _end(self) -> float:
        self._flush_log()
        took = self.elapsed()
        if self._drawn:
            self.stream.write(CLEAR_LINE)
            self._drawn = False
        self._step, self._action = None, ""
        return took

    def done(self, text: Optional[str] = None) -> None:
        """The running step succeeded: ``✓ <text or step> (<elapsed> s)``."""
        with self._lock:
            name = self._step
            took = self._end()
            if not self.quiet:
                self._line("ok", f"{text or name} ({took:.0f} s)")

    def fail(self, text: str) -> None:
        """The running step (or the task) failed: ``✗ <text>``, printed also when quiet."""
        with self._lock:
            self._end()
            self._line("fail", text)

    def skip(self, text: str) -> None:
        """A step that does not run: ``• <text>``."""
        with self._lock:
            if self._step is not None:
                self._end()
            if not self.quiet:
                self._line("skip", text)

    def warn(self, text: str) -> None:
        """Something the user should know that does not stop the task: ``! <text>``."""
        if not self.quiet:
            self._line("warn", text)

    def plan(self, text: str) -> None:
        """What a dry run would do: ``· <text>``."""
        if not self.quiet:
            self._line("plan", text)

    @contextmanager
    def step(self, name: str) -> Iterator["Progress"]:
        """Run a block as the step ``name``: ``✓`` when it returns, ``✗ <name>: <error>`` when it raises
        (unless the block printed its own :meth:`fail` line)."""
        self.start(name)
        try:
            yield self
        except BaseException as exc:
            if self._step == name:
                self.fail(f"{name}: {exc}" if str(exc) else name)
            raise
        if self._step == name:
            self.done()

    # ------------------------------------------------------------------ the log

    def follow(self, log: Optional[Path]) -> None:
        """With ``verbose``, stream the lines appended to ``log`` from now on (None: stop)."""
        if not self.verbose:
            return
        with self._lock:
            self._flush_log()
            self._log, self._partial = (Path(log) if log is not None else None), ""
            try:
                self._offset = self._log.stat().st_size if self._log is not None else 0
            except OSError:
                self._offset = 0
        self._run_loop()

    def _flush_log(self, final: bool = True) -> None:
        if self._log is None:
            return
        try:
            with open(self._log, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return
        self._offset += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self._write(f"    {line.rstrip()}")

    # ------------------------------------------------------------------ the loop

    def tick(self) -> None:
        """One turn of the loop: the next spinner frame, and the log's new lines with ``verbose``."""
        with self._lock:
            self._flush_log(final=False)
            if self.live and self._step is not None:
                self._frame += 1
                self._draw()
                self.stream.flush()

    def _run_loop(self) -> None:
        if not self.animate or self._thread is not None or not (self.live or self._log is not None):
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(INTERVAL_S):
                self.tick()

        self._thread = threading.Thread(target=loop, name="dslab-progress", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop; the running step's line is cleared (a step never ended is left as it is)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._flush_log()
            if self._drawn:
                self.stream.write(CLEAR_LINE)
                self._drawn = False
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Silent(Progress):
    """Progress that prints nothing (the default of a :class:`~lab.context.Context` made by hand)."""

    def __init__(self):
        super().__init__(_Nowhere(), quiet=True, env={}, animate=False)


class _Nowhere:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def for_task(verbose: bool = False, quiet: bool = False, stream: Optional[TextIO] = None) -> Progress:
    """The progress of a task run from the command line (``--verbose``, ``--quiet``), on stderr."""
    return Progress(stream or sys.stderr, verbose=verbose, quiet=quiet)
