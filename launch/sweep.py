#!/usr/bin/env python3
"""Expand a grid of config values into one metacog command per point (stdlib only).

Grid keys without a dot go into the config's sweep string
(``--config=FILE:task=single,seed=0``, read by ``get_config(arg)``); keys with
a dot become overrides (``--config.train.lr=1e-5``). Values are separated by
commas; use ``+`` inside a value for a list (``domains=gsm8k+mmlu_pro`` is
one point training on both). Every point gets its own workdir named after it::

    python launch/sweep.py --config=configs/experiment.py \\
        --grid task=single,pairwise,multitask,base --grid domains=gsm8k,mmlu_pro \\
        --grid model=smollm2_135m --grid seed=0,1 --stages=train,eval --workdir_root=runs/sweep1

Outputs (``--mode``): ``print`` (one line per point, stages joined by ``&&``;
the default dry run), ``script`` (a bash script, ``--out``), or ``tpu`` (one
``launch/tpu_vm.py run`` command per stage and point, for a TPU VM).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import shlex
import sys
from collections.abc import Sequence

STAGES = ("sample", "targets", "train", "eval", "report", "explain", "gap", "study", "demo")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One grid point: its name, workdir and one metacog argv per stage."""

    name: str
    values: tuple[tuple[str, str], ...]
    workdir: str
    commands: tuple[tuple[str, ...], ...]


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Parse ``["task=single,pairwise", "seed=0,1"]`` into ``[("task", [...]), ("seed", [...])]``.

    Raises:
      ValueError: an item without ``=``, an empty value list, or a key given twice.
    """
    grid: list[tuple[str, list[str]]] = []
    seen = set()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--grid {item!r}: expected key=value1,value2,...")
        if key in seen:
            raise ValueError(f"--grid {item!r}: key {key!r} given twice")
        seen.add(key)
        parsed = [v.strip() for v in values.split(",") if v.strip()]
        if not parsed:
            raise ValueError(f"--grid {item!r}: no values")
        grid.append((key, parsed))
    return grid


def expand_grid(grid: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[tuple[str, str], ...]]:
    """All points of the grid (cartesian product, last key varying fastest)."""
    keys = [key for key, _ in grid]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*(values for _, values in grid))]


def point_name(values: Sequence[tuple[str, str]]) -> str:
    """A directory-safe name such as ``task-single_domains-gsm8k+mmlu_pro_seed-0``.

    Characters other than letters, digits and ``._+-`` become ``-``.
    """
    parts = []
    for key, value in values:
        parts.append(re.sub(r"[^A-Za-z0-9._+-]", "-", key) + "-" +
                     re.sub(r"[^A-Za-z0-9._+-]", "-", value))
    return "_".join(parts) or "default"


def metacog_argv(stage: str, config: str, values: Sequence[tuple[str, str]], workdir: str,
                 fixed: Sequence[tuple[str, str]] = ()) -> tuple[str, ...]:
    """The argv (after ``metacog``) of one stage at one point.

    Sweep-string values (keys without a dot) are appended to ``config``'s own
    ``:arg`` if it has one; dotted keys become ``--config.key=value``.
    """
    items = list(fixed) + list(values)
    sweep = ",".join(f"{k}={v}" for k, v in items if "." not in k)
    overrides = [f"--config.{k}={v}" for k, v in items if "." in k]
    spec = config
    if sweep:
        spec = f"{config},{sweep}" if ".py:" in config else f"{config}:{sweep}"
    return (stage, f"--config={spec}", *overrides, f"--workdir={workdir}")


def build_sweep(config: str, grid: Sequence[tuple[str, Sequence[str]]], stages: Sequence[str] = ("train",),
                workdir_root: str = "runs", fixed: Sequence[tuple[str, str]] = ()) -> list[SweepPoint]:
    """Every point of ``grid`` with its workdir ``<workdir_root>/<point name>`` and commands.

    Raises:
      ValueError: an unknown stage, or two points whose names collide.
    """
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stages {bad}; metacog subcommands are {', '.join(STAGES)}")
    points = []
    names: dict[str, tuple[tuple[str, str], ...]] = {}
    for values in expand_grid(grid):
        name = point_name(values)
        if name in names:
            raise ValueError(f"grid points {names[name]} and {values} both map to workdir name {name!r}")
        names[name] = values
        workdir = f"{workdir_root.rstrip('/')}/{name}"
        commands = tuple(metacog_argv(stage, config, values, workdir, fixed) for stage in stages)
        points.append(SweepPoint(name=name, values=values, workdir=workdir, commands=commands))
    return points


def render_lines(points: Sequence[SweepPoint]) -> list[str]:
    """One shell line per point: its stages joined with ``&&``."""
    return [" && ".join(shlex.join(("metacog", *argv)) for argv in p.commands) for p in points]


def render_script(points: Sequence[SweepPoint]) -> str:
    """A bash script running the points one after another, stopping at the first failure."""
    lines = ["#!/usr/bin/env bash", "# Generated by launch/sweep.py", "set -euo pipefail", ""]
    for point, line in zip(points, render_lines(points)):
        lines += [f"echo '== {point.name}'", line, ""]
    return "\n".join(lines)


def render_tpu(points: Sequence[SweepPoint], tpu_args: Sequence[str]) -> list[str]:
    """One ``python launch/tpu_vm.py run`` line per point and stage (run them in order per point)."""
    lines = []
    for point in points:
        for argv in point.commands:
            launcher = ["python", "launch/tpu_vm.py", "run", *tpu_args, f"--run_name={point.name}-{argv[0]}",
                        "--", *argv]
            lines.append(shlex.join(launcher))
    return lines


def _pairs(items: Sequence[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected key=value")
        pairs.append((key.strip(), value))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, optionally with :arg")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="key=value fixed for every point")
    parser.add_argument("--stages", default="train", help="comma-separated metacog subcommands per point")
    parser.add_argument("--workdir_root", default="runs")
    parser.add_argument("--mode", choices=("print", "script", "tpu"), default="print")
    parser.add_argument("--out", default=None, help="script mode: write here instead of stdout")
    parser.add_argument("--tpu_arg", action="append", default=[],
                        help="tpu mode: an argument for tpu_vm.py run, e.g. --tpu_arg=--name=mc")
    args = parser.parse_args(argv)
    try:
        points = build_sweep(args.config, parse_grid(args.grid),
                             stages=[s.strip() for s in args.stages.split(",") if s.strip()],
                             workdir_root=args.workdir_root, fixed=_pairs(args.set, "--set"))
    except ValueError as error:
        raise SystemExit(f"sweep.py: {error}") from None
    if args.mode == "script":
        text = render_script(points)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.write(text)
            print(f"wrote {len(points)} runs to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    elif args.mode == "tpu":
        print("\n".join(render_tpu(points, args.tpu_arg)))
    else:
        print("\n".join(render_lines(points)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
