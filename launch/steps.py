"""Launch steps: a command to run locally, printable exactly for --dry_run (stdlib only).

The launch scripts build lists of :class:`Step` with pure functions (so tests
can check the exact commands) and hand them to :func:`execute`, which either
prints them as shell lines or runs them. :func:`split_metacog_argv` separates
a launcher's own flags from the ``metacog`` command it runs.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence


def split_metacog_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split a launcher command line at its first ``--``: the launcher's flags, then the metacog command.

    ``launcher.py --hosts=a,b -- train --config=... -- x`` gives ``(["--hosts=a,b"], ["train",
    "--config=...", "--", "x"])``: only the first ``--`` separates, later ones belong to the metacog
    command. Without ``--`` the whole line is the launcher's and the metacog command is empty.

    Args:
      argv: the arguments after the script name (``sys.argv[1:]``).

    Returns:
      ``(launcher_argv, metacog_argv)``, new lists.
    """
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1:]


@dataclasses.dataclass(frozen=True)
class Step:
    """One local command.

    Attributes:
      argv: the command, as an argument list (never through a local shell).
      unless: if set, ``argv`` is skipped when this probe command succeeds
        (e.g. "describe" before "create", so an existing TPU VM is reused).
      action: a local Python action run instead of ``argv`` (packing sources);
        ``argv`` then only documents it.
      description: a short comment printed above the command.
    """

    argv: tuple[str, ...]
    unless: tuple[str, ...] | None = None
    action: Callable[[], None] | None = None
    description: str = ""

    def shell(self) -> str:
        """The step as one POSIX shell line (what --dry_run prints)."""
        line = shlex.join(self.argv)
        if self.action is not None:
            return "# local: " + line
        if self.unless is not None:
            return f"{shlex.join(self.unless)} >/dev/null 2>&1 || {line}"
        return line


def render(steps: Sequence[Step]) -> str:
    """All steps as shell text, each preceded by its description comment."""
    lines = []
    for step in steps:
        if step.description:
            lines.append(f"# {step.description}")
        lines.append(step.shell())
    return "\n".join(lines) + "\n"


def execute(steps: Sequence[Step], dry_run: bool) -> int:
    """Print (dry run) or run the steps in order, stopping at the first failure.

    Returns:
      0 on success, else the failing command's exit status.
    """
    if dry_run:
        sys.stdout.write(render(steps))
        return 0
    for step in steps:
        if step.description:
            print(f"# {step.description}", flush=True)
        if step.action is not None:
            step.action()
            continue
        if step.unless is not None:
            probe = subprocess.run(step.unless, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if probe.returncode == 0:
                print(f"# skipped (already there): {shlex.join(step.argv)}", flush=True)
                continue
        print("+ " + shlex.join(step.argv), flush=True)
        status = subprocess.run(step.argv).returncode
        if status != 0:
            print(f"command failed with exit status {status}: {shlex.join(step.argv)}", file=sys.stderr)
            return status
    return 0
