"""What the Colab quickstart (colab/quickstart.ipynb) calls, so its cells hold no logic.

    config = load_demo_config("configs/demo.py:quick", [])    # start the process, load, validate, fit
    report = run_demo(config, workdir)
    out = demo_outputs(report, workdir)                        # main table + reliability diagram PNGs
    print(out.table); display(Image(filename=str(out.diagrams[0])))
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections


@dataclass(frozen=True)
class DemoOutputs:
    """The parts of a finished demo a notebook shows.

    Attributes:
      table: the main table as fixed-width text (ECE, AUC, AUC_c, AUC_a per dataset x condition).
      report_md: the full report (all tables, diagrams linked).
      diagrams: reliability-diagram PNGs that exist, condition-major (in the report's condition order),
        in-domain datasets before out-of-domain ones.
    """

    table: str
    report_md: Path
    diagrams: list[Path]


def demo_report_dir(workdir: str | os.PathLike) -> Path:
    """Where `metacog_jax.demo.run_demo(config, workdir)` writes report.md, report.json and figures/."""
    return Path(workdir) / "report"


def reliability_diagrams(report: Mapping[str, Any], report_dir: str | os.PathLike, *,
                         condition: str | None = None, dataset: str | None = None) -> list[Path]:
    """The report's reliability-diagram files, optionally for one condition and/or one dataset.

    Args:
      report: what `build_report` / `run_demo` returned (its "diagrams" paths are relative to report_dir).
      report_dir: the folder the report was written to.
      condition, dataset: keep only this condition / dataset (None = all).

    Returns:
      Absolute paths, condition-major, datasets in-domain first; conditions or datasets without single-task
      items have no diagram and are skipped.

    Raises:
      KeyError: `condition` or `dataset` is not in the report (the known names are listed).
      FileNotFoundError: the report lists a diagram that is not on disk.
    """
    report_dir = Path(report_dir)
    conditions = list(report["conditions"])
    datasets = [ds for names in report["datasets"].values() for ds in names]
    if condition is not None and condition not in conditions:
        raise KeyError(f"condition {condition!r} is not in the report; it has {', '.join(conditions)}")
    if dataset is not None and dataset not in datasets:
        raise KeyError(f"dataset {dataset!r} is not in the report; it has {', '.join(datasets)}")
    paths = []
    for cond in conditions:
        if condition is not None and cond != condition:
            continue
        for ds in datasets:
            if dataset is not None and ds != dataset:
                continue
            rel = report["diagrams"].get(cond, {}).get(ds)
            if rel is None:
                continue
            path = (report_dir / rel).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"{report_dir / 'report.json'}: diagram {rel!r} ({cond}, {ds}) is missing")
            paths.append(path)
    return paths


def demo_outputs(report: Mapping[str, Any], workdir: str | os.PathLike) -> DemoOutputs:
    """The main table and the reliability diagrams of a demo run in `workdir` (see `DemoOutputs`)."""
    from metacog_jax.evaluation.report import format_main_table

    report_dir = demo_report_dir(workdir)
    return DemoOutputs(table=format_main_table(report), report_md=(report_dir / "report.md").resolve(),
                       diagrams=reliability_diagrams(report, report_dir))


def data_parallel_degree(config: ml_collections.ConfigDict, device_count: int) -> int:
    """data x fsdp of the config's mesh on `device_count` devices: how many ways a train batch is split."""
    from metacog_jax.sharding import resolve_mesh_shape

    data, fsdp, _ = resolve_mesh_shape(tuple(config.mesh.shape), device_count)
    return data * fsdp


def fit_to_devices(config: ml_collections.ConfigDict, device_count: int | None = None) -> list[str]:
    """Raise train.batch_size to the next size every device can take an equal share of; in place.

    A config written for one device (the demo: batch 4) cannot split its batch over an 8-core TPU
    runtime. Each gradient-accumulation micro-batch must divide evenly over data x fsdp, so the batch
    becomes the next multiple of degree x train.grad_accum.

    Args:
      config: an experiment config (locked is fine: only existing fields are set).
      device_count: devices the mesh will cover (default: jax.device_count()).

    Returns:
      One line per changed field ("train.batch_size: 4 -> 8 (...)"); empty when nothing changed.
    """
    if device_count is None:
        import jax

        device_count = jax.device_count()
    degree = data_parallel_degree(config, device_count)
    step = degree * int(config.train.grad_accum)
    old = int(config.train.batch_size)
    new = math.ceil(old / step) * step
    if new == old:
        return []
    config.train.batch_size = new
    return [f"train.batch_size: {old} -> {new} (data x fsdp = {degree} on {device_count} devices, "
            f"grad_accum = {config.train.grad_accum})"]


def load_demo_config(spec: str, overrides: Sequence[str] = (), device_count: int | None = None
                     ) -> ml_collections.ConfigDict:
    """`load_config(spec, overrides)`, checked like `metacog demo` does and fitted to the devices.

    It first runs the process start-up every `metacog` model stage runs (`runtime.start_process`: host
    allocator, compilation cache, multi-host join; once per process), since the notebook then runs the
    stages in this process (`run_demo`) and `fit_to_devices` reads the device count.

    Args:
      spec: "configs/<file>.py[:sweep]", relative to the working directory.
      overrides: "field=value" strings, e.g. ["train.steps=10"].
      device_count: see `fit_to_devices`.

    Returns:
      The locked config. Fields changed to fit the devices are printed.

    Raises:
      FileNotFoundError / ValueError: as `runtime.start_process`, `load_config` and
        `experiment_config.validate`, plus a config without the `demo` section that `run_demo` needs
        (configs/demo.py and configs/tiny.py have it).
    """
    from metacog_jax import runtime
    from metacog_jax.config_utils import load_config
    from metacog_jax.experiment_config import validate

    runtime.start_process()
    config = load_config(spec, list(overrides))
    if "demo" not in config:
        raise ValueError(f"config {spec!r} has no 'demo' section (conditions to run); use configs/demo.py, "
                         f"e.g. 'configs/demo.py:quick,model=<preset>'")
    validate(config)
    for change in fit_to_devices(config, device_count):
        print(f"[notebook] fitted to the devices: {change}")
    return config


def format_model_presets() -> str:
    """MODEL_PRESETS as fixed-width text: preset (the sweep's model=...), load spec, mesh, note."""
    from metacog_jax.experiment_config import MODEL_PRESETS

    rows = [["model=", "loads", "mesh (data, fsdp, tensor)", "note"]]
    rows += [[name, spec, str(tuple(mesh)), note] for name, (spec, mesh, note) in MODEL_PRESETS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
