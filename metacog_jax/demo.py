"""`metacog demo`: the whole method end to end, every stage resumable.

    <workdir>/data/      samples, questions, targets (the base model's own answers)
    <workdir>/<cond>/    checkpoints, train logs, eval/ for cond in base, single, pairwise, multitask
    <workdir>/report/    report.md, report.json, reliability diagrams

Re-running after a kill continues where it stopped: sampling skips finished questions, targets and
evaluations are skipped when their output exists, training resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

from metacog_jax import artifacts, multihost, pipeline

log = logging.getLogger(__name__)

CONDITION_NAMES = {"base": "base", "single": "S", "pairwise": "C", "multitask": "C+S"}


def with_real_sets(config) -> None:
    """Add the configured real datasets when a data dir is given (offline copy of the official files)."""
    if not config.data.manual_dir or "demo" not in config:
        return
    config.data.domains = tuple(config.data.domains) + tuple(config.demo.real_in_domain)
    config.data.ood_domains = tuple(config.data.ood_domains) + tuple(config.demo.real_out_of_domain)


def condition_config(config, task: str):
    c = copy.deepcopy(config)
    c.train.task = "none" if task == "base" else task
    if task == "base":
        c.train.steps = 0
    return c


def _stage(name: str, marker: Path, fn):
    if marker.exists():
        print(f"[demo] {name}: done earlier ({marker.parent}), skipped")
        return json.loads(marker.read_text())["result"]
    t0 = time.perf_counter()
    print(f"[demo] {name} ...", flush=True)
    result = fn()
    seconds = time.perf_counter() - t0
    multihost.leader_value(lambda: artifacts.write_json(marker, {"seconds": seconds, "result": result}))
    print(f"[demo] {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    return result


def run_demo(config, workdir: str | Path) -> dict:
    from metacog_jax.config_utils import save_config
    from metacog_jax.data.targets import format_summary
    from metacog_jax.evaluation.report import build_report, format_main_table

    t_start = time.perf_counter()
    workdir = Path(workdir)
    data = workdir / "data"
    with_real_sets(config)
    workdir.mkdir(parents=True, exist_ok=True)
    multihost.leader_value(lambda: save_config(config, workdir / "config.json"))  # one writer
    print(f"[demo] model {config.model.name}; in-domain {', '.join(config.data.domains)}; out-of-domain "
          f"{', '.join(config.data.ood_domains)}; workdir {workdir}")
    _stage("sample", data / "samples" / "DONE", lambda: pipeline.stage_sample(config, data))
    summary = _stage("targets", data / "targets" / "DONE", lambda: pipeline.stage_targets(config, data))
    print(format_summary(summary))
    from metacog_jax.data.targets import read_targets

    single, pairwise, _ = read_targets(data)
    has_pairs = any(r["split"] == "train" for r in pairwise)
    runs = {}
    for task in config.demo.conditions:
        name = CONDITION_NAMES[task]
        if task in ("pairwise", "multitask") and not has_pairs:
            print(f"[demo] {name}: skipped, no training pairs (every training question has the same "
                  "consistency bin, so no pair has a better question)")
            continue
        run = workdir / task
        c = condition_config(config, task)
        run.mkdir(parents=True, exist_ok=True)
        multihost.leader_value(lambda: save_config(c, run / "config.json"))
        if task != "base":
            _stage(f"train {name}", run / "train" / "DONE", lambda: pipeline.stage_train(c, run, data))
        _stage(f"eval {name}", run / "eval" / "DONE", lambda: pipeline.stage_eval(c, run, data))
        runs[name] = run
    report = multihost.leader_value(lambda: build_report(runs, workdir / "report", base="base",
                                                         n_resamples=config.eval.n_resamples, seed=config.seed))
    print()
    print(format_main_table(report))
    minutes = (time.perf_counter() - t_start) / 60
    print(f"\n[demo] report: {workdir / 'report' / 'report.md'}; reliability diagrams: "
          f"{workdir / 'report' / 'figures'}/*.png; this invocation took {minutes:.1f} min")
    return report
