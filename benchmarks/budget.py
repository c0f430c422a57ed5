"""A benchmark command that must end in time: a lent GPU machine gives one command a few minutes, and a
command cut there returns only what it had written. The scripts that run on such a machine
(gpu_check.py, vs_timm.py, quickstart_backends.py) measure within a Budget: a child process still
running when the budget is spent is interrupted (SIGINT: `zoo run` stops its worker and keeps the runs
it finished), then killed; checks not begun are recorded as skipped, and each script writes its rows
after every check, so a cut-short command still leaves every figure it measured."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRACE_SECONDS = 30.0  # an interrupted `zoo run` records its runs and stops its worker within this


def _interrupt_by_default() -> None:
    """In the child, before it starts: SIGINT's default action. A script started as a background job
    (a non-interactive shell's `cmd &`, as a remote machine may run it) has SIGINT ignored, its children
    inherit that, and Python then never raises KeyboardInterrupt: the budget's interrupt would be lost
    and the child killed GRACE_SECONDS later without writing what it had."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Finished:
    returncode: int | None  # None: cut at the budget
    output: str             # stdout and stderr together
    cut: bool


class Budget:
    """Seconds left to a command; ``seconds`` None or 0: no limit."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds or None
        self.deadline = time.monotonic() + seconds if seconds else None

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def share(self, fraction: float) -> "Budget":
        """A budget of ``fraction`` of the seconds left here (no limit where this one has none): a check
        given its share cannot spend the time of the checks after it."""
        left = self.left()
        return Budget(None) if left is None else Budget(max(left * min(1.0, fraction), 1e-3))

    def run(self, command: list[str], **popen) -> Finished:
        """``command`` run to its end or until the budget is spent: then SIGINT, then SIGKILL after
        GRACE_SECONDS (``popen``: subprocess.Popen's env, cwd...)."""
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=_interrupt_by_default, **popen)
        try:
            output, _ = process.communicate(timeout=self.left())
            return Finished(process.returncode, output, cut=False)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                output, _ = process.communicate(timeout=GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    output, _ = process.communicate(timeout=GRACE_SECONDS)
                except subprocess.TimeoutExpired:  # a grandchild still holds the pipe: leave its output
                    output = ""
            return Finished(None, output or "", cut=True)

    def measured(self, command, file_name: str, read, env: dict | None = None) -> dict:
        """What a child process measures and writes to a file: ``command(path)`` (its argv, told to write
        ``path``, a ``file_name`` in a temporary folder) run within this budget, with this checkout's zoo
        importable and ``env`` added to the environment; ``read(path)`` of the file it wrote, else
        ``{"error": why}``: the budget spent before it began, cut at it, or the child's last line of output."""
        if self.spent():
            return {"error": f"not measured: the time budget ({self.seconds:.0f} s) was spent"}
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / file_name
            environment = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                           **(env or {})}
            done = self.run(command(out), env=environment)
            if done.cut:
                return {"error": f"cut at the time budget ({self.seconds:.0f} s)"}
            if not out.is_file():
                return {"error": (done.output.strip().splitlines() or ["no output"])[-1][:300]}
            return read(out)
