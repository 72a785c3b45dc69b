"""`metacog tune`: choose settings on a validation split carved from train, never on test.

Three steps, all on `data.evaluate_on="validation"` (the evaluated questions are a hashed share
`data.validation_fraction` of the train split; training uses the rest; no test question is loaded; only
the in-domain sets are used, so out-of-domain sets are never sampled here):

1. The answer instruction (`data.answer_instruction`): for each named wording in
   `prompts.ANSWER_INSTRUCTIONS`, greedy accuracy on the in-domain validation questions (per difficulty
   level where the domain has levels) and the share of temperature-1 samples the grader can read. The
   highest greedy accuracy wins; ties go to the higher parse rate.
2. The sampling temperature (`sample.temperature`, `--temperatures 1.0,0.7,0.5`): the K samples at each
   temperature give every question a consistency and a target (consistency-bin accuracy, bins fit on
   the train part). The temperature whose validation targets best separate the questions the model
   answers right (greedy) from those it answers wrong wins (AUROC of the target against greedy
   correctness; the greedy answers do not depend on the temperature, so every candidate is judged on
   the same answers); ties go to the higher temperature. A target that cannot tell right from wrong
   cannot teach discrimination: at temperature 1 a small model's samples are close to noise.
3. Training settings: every point of a grid of config overrides (`--grid train.lr=3e-4,1e-3`) trains the
   configured tasks (S and C by default) on the shared samples and targets (a point that sets a
   `targets.*` option builds its own targets from the shared samples) and evaluates them on
   validation, next to the untrained base. The score of a point is the mean over its tasks of the paired
   gain over base in the task's own discrimination metric (AUC for S, debiased AUC_c for C, AUC and
   AUC_c for C+S); a point whose answers changed (paired accuracy interval excluding 0) is not chosen.

Writes <workdir>/tune.json and tune.md and prints the table; the chosen values go into the config file
by hand (configs/demo.py records them with the command that chose them).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metacog_jax import artifacts, multihost

log = logging.getLogger(__name__)

TASK_SCORE = {"single": ("auroc",), "pairwise": ("auc_c",), "multitask": ("auroc", "auc_c")}


def parse_grid(entries: Sequence[str]) -> dict[str, list[str]]:
    """``["train.lr=3e-4,1e-3", "train.steps=24"]`` -> ``{"train.lr": ["3e-4", "1e-3"], ...}``."""
    grid: dict[str, list[str]] = {}
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--grid {entry!r}: expected FIELD=V1,V2,... (e.g. train.lr=3e-4,1e-3)")
        if key in grid:
            raise ValueError(f"--grid names {key!r} twice")
        grid[key] = [v for v in values.split(",") if v]
    return grid


def grid_points(grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))] or [{}]


def _point_name(point: Mapping[str, str]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()) or "default"


def validation_config(config):
    """The config on the validation carve, in-domain sets only (tuning looks only in domain)."""
    c = copy.deepcopy(config)
    c.data.evaluate_on = "validation"
    c.data.ood_domains = ()
    return c


def data_dir(workdir: Path, temperature: float) -> Path:
    """Samples and targets of one sampling temperature (shared by the temperature and training steps);
    the runs trained on them (base and one per grid point and task) go to the sibling ``runs_T<t>``."""
    return Path(workdir) / f"data_T{float(temperature):g}"


def _sample_and_targets(c, data: Path, model=None) -> None:
    from metacog_jax import pipeline

    if not (data / "samples" / "DONE").exists():
        pipeline.stage_sample(c, data, model=model)
        multihost.leader_value(lambda: artifacts.write_json(data / "samples" / "DONE", {"done": True}))
    pipeline.stage_targets(c, data)


def target_quality(data: Path, n_resamples: int = 500, seed: int = 0) -> dict[str, Any]:
    """How well the targets of one sampling run track greedy correctness on the validation questions.

    Returns AUROC of the un-jittered target (``target_raw``) and of raw consistency against greedy
    correctness, with 95% bootstrap intervals, the counts they rest on, the share of questions whose
    modal answer is the greedy answer, and the spread (standard deviation) of the train targets."""
    from metacog_jax.data import targets as targets_lib
    from metacog_jax.evaluation import metrics
    from metacog_jax.evaluation.bootstrap import bootstrap_ci

    single, _, _ = targets_lib.read_targets(data)
    samples, _ = targets_lib.load_sampled(data)
    by_id = {s["id"]: s for s in samples}
    val = [r for r in single if r["split"] == "test"]  # the validation carve, labelled "test"
    train = [r for r in single if r["split"] == "train"]
    if not val or not train:
        raise ValueError(f"{data}: targets need train and validation questions (got {len(train)} and {len(val)})")
    missing = [r["question_id"] for r in val if by_id.get(r["question_id"], {}).get("greedy") is None]
    if missing:
        raise ValueError(f"{data}: no greedy answer for validation question(s) {missing[:3]}")
    correct = np.array([by_id[r["question_id"]]["greedy"]["correct"] for r in val], dtype=np.float32)
    out: dict[str, Any] = {"n_correct": int(correct.sum()), "n_wrong": int(len(correct) - correct.sum())}
    for name, field in (("target_auroc", "target_raw"), ("consistency_auroc", "consistency")):
        score = np.array([r[field] for r in val], dtype=np.float32)
        point, low, high = bootstrap_ci(metrics.auroc, (score, correct), n_resamples, seed)
        out[name] = {"estimate": point, "low": low, "high": high}
    out["modal_is_greedy"] = float(np.mean([by_id[r["question_id"]]["modal_answer"] ==
                                            by_id[r["question_id"]]["greedy"]["answer"] for r in val]))
    out["train_target_std"] = float(np.std([r["target_raw"] for r in train]))
    out["train_target_mean"] = float(np.mean([r["target_raw"] for r in train]))
    return out


def _or_minus_inf(x) -> float:
    """An undefined AUROC (no right or no wrong answer) never wins."""
    return float("-inf") if x is None or x != x else float(x)


def _fmt_interval(m: Mapping[str, Any]) -> str:
    if m["estimate"] is None or m["estimate"] != m["estimate"]:
        return "undefined"
    return f"{m['estimate']:.3f} [{m['low']:.2f}, {m['high']:.2f}]"


def choose_temperature(config, workdir: Path, temperatures: Sequence[float]) -> dict[str, Any]:
    """Sample at each temperature and judge its targets on validation (see the module docstring)."""
    from metacog_jax.models.build import build_model

    if not temperatures:
        raise ValueError("--temperatures: give at least one temperature")
    if any(t <= 0 for t in temperatures):
        raise ValueError(f"--temperatures: sampling temperatures must be > 0, got {list(temperatures)}")
    c = validation_config(config)
    loaded = build_model(c)
    rows = {}
    for t in temperatures:
        tc = copy.deepcopy(c)
        tc.sample.temperature = float(t)
        data = data_dir(workdir, t)
        _sample_and_targets(tc, data, model=loaded)
        rows[f"{float(t):g}"] = target_quality(data, c.eval.n_resamples, c.seed)
        log.info("temperature %g: %s", t, rows[f"{float(t):g}"])
    best = max(rows, key=lambda t: (_or_minus_inf(rows[t]["target_auroc"]["estimate"]), float(t)))
    return {"candidates": rows, "chosen": float(best)}


def choose_instruction(config, workdir: Path, names: Sequence[str] | None = None, k: int = 4) -> dict[str, Any]:
    """Greedy accuracy and temperature-1 parse rate of each answer instruction on the validation questions."""
    import jax

    from metacog_jax import pipeline
    from metacog_jax.data import grading, prompts
    from metacog_jax.models.build import build_model
    from metacog_jax.sampling import Sampler, SamplingParams

    c = validation_config(config)
    loaded = build_model(c)
    sampler = Sampler(loaded.model, loaded.tokenizer, batch_size=c.sample.batch_size)
    questions = [q for name, qs in pipeline.load_domain_questions(c, workdir).items() if name in c.data.domains
                 for q in qs if q.split == "test"]  # the validation carve, labelled "test" for the stages
    rows = {}
    for name in names or list(prompts.ANSWER_INSTRUCTIONS):
        ids = [loaded.tokenizer.encode(prompts.answer_prompt(loaded.tokenizer, q, name), add_special_tokens=False)
               for q in questions]
        greedy = sampler.generate(ids, SamplingParams(max_new_tokens=c.sample.max_new_tokens, temperature=0.0),
                                  jax.random.key(c.seed))
        sampled = sampler.generate(ids, SamplingParams(max_new_tokens=c.sample.max_new_tokens, temperature=1.0,
                                                       num_samples=k), jax.random.key(c.seed + 1))
        correct = [grading.grade(q, row[0].text).correct for q, row in zip(questions, greedy.completions)]
        parsed = [grading.grade(q, s.text).normalized is not None
                  for q, row in zip(questions, sampled.completions) for s in row]
        by_level: dict[str, list[bool]] = {}
        for q, ok in zip(questions, correct):
            by_level.setdefault(q.meta.get("difficulty", "all"), []).append(ok)
        rows[name] = {"instruction": prompts.answer_instruction(name), "n": len(questions),
                      "greedy_accuracy": float(np.mean(correct)), "sample_parse_rate": float(np.mean(parsed)),
                      "accuracy_by_level": {lv: float(np.mean(v)) for lv, v in sorted(by_level.items())}}
        log.info("instruction %s: %s", name, rows[name])
    best = max(rows, key=lambda n: (rows[n]["greedy_accuracy"], rows[n]["sample_parse_rate"]))
    return {"candidates": rows, "chosen": best}


def _point_data(config, data: Path, point_dir: Path) -> Path:
    """A data dir for a grid point that changes target options: the shared samples and questions (linked)
    and the point's own targets."""
    from metacog_jax import pipeline

    out = point_dir / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("samples", "questions"):
        link = out / name
        if not link.exists():
            link.symlink_to((data / name).resolve(), target_is_directory=True)
    pipeline.stage_targets(config, out)
    return out


def tune_training(config, workdir: Path, grid: Mapping[str, Sequence[str]],
                  tasks: Sequence[str] = ("single", "pairwise")) -> dict[str, Any]:
    """Train `tasks` at every grid point and evaluate on validation against base; the best point by the
    mean paired gain in each task's discrimination metric."""
    from metacog_jax import pipeline
    from metacog_jax.config_utils import apply_override
    from metacog_jax.demo import condition_config
    from metacog_jax.evaluation.paired import ItemRows, paired_differences

    c = validation_config(config)
    data = data_dir(workdir, c.sample.temperature)
    _sample_and_targets(c, data)
    runs = data.parent / data.name.replace("data_", "runs_")  # the runs trained on these samples
    base_run = runs / "base"
    if not (base_run / "eval" / "metrics.json").exists():
        pipeline.stage_eval(condition_config(c, "base"), base_run, data)
    in_domain = list(c.data.domains)
    results = []
    for point in grid_points(grid):
        pc = copy.deepcopy(c)
        for key, value in point.items():
            apply_override(pc, f"{key}={value}")
        entry: dict[str, Any] = {"point": point, "name": _point_name(point), "tasks": {}}
        point_data = _point_data(pc, data, runs / entry["name"]) if any(k.startswith("targets.") for k in point) \
            else data
        for task in tasks:
            run = runs / entry["name"] / task
            tc = condition_config(pc, task)
            pipeline.stage_train(tc, run, point_data)
            if not (run / "eval" / "metrics.json").exists():
                pipeline.stage_eval(tc, run, point_data)
            diffs = {}
            for ds in in_domain:
                d, _ = paired_differences(ItemRows(run / "eval" / f"{ds}.jsonl"),
                                          ItemRows(base_run / "eval" / f"{ds}.jsonl"), c.eval.n_resamples, c.seed)
                diffs[ds] = d
            gains = [diffs[ds][m]["estimate"] for ds in in_domain for m in TASK_SCORE[task]
                     if diffs[ds].get(m, {}).get("estimate") is not None]
            changed = any((lo := diffs[ds]["accuracy"]["low"]) is not None and
                          (hi := diffs[ds]["accuracy"]["high"]) is not None and (lo > 0 or hi < 0)
                          for ds in in_domain)
            entry["tasks"][task] = {"differences": diffs, "gain": float(np.mean(gains)) if gains else None,
                                    "accuracy_changed": changed}
        gains = [t["gain"] for t in entry["tasks"].values() if t["gain"] is not None]
        entry["score"] = float(np.mean(gains)) if gains else None
        entry["eligible"] = entry["score"] is not None and not any(t["accuracy_changed"]
                                                                   for t in entry["tasks"].values())
        results.append(entry)
    eligible = [e for e in results if e["eligible"]]
    chosen = max(eligible, key=lambda e: e["score"])["name"] if eligible else None
    return {"points": results, "chosen": chosen}


def run_tune(config, workdir: str | Path, grid: Sequence[str] = (), tasks: Sequence[str] = ("single", "pairwise"),
             instructions: bool = True, temperatures: Sequence[float] = ()) -> dict[str, Any]:
    """The steps asked for; the training grid runs with the chosen instruction and temperature.
    Writes tune.json and tune.md."""
    workdir = Path(workdir)
    out: dict[str, Any] = {"evaluate_on": "validation",
                           "validation_fraction": float(config.data.validation_fraction)}
    if instructions:
        out["instruction"] = choose_instruction(config, workdir)
        config = copy.deepcopy(config)
        config.data.answer_instruction = out["instruction"]["chosen"]
    if temperatures:
        out["temperature"] = choose_temperature(config, workdir, temperatures)
        config = copy.deepcopy(config)
        config.sample.temperature = out["temperature"]["chosen"]
    parsed = parse_grid(grid)
    if parsed or not instructions:
        out["training"] = tune_training(config, workdir, parsed, tasks)
    multihost.leader_value(lambda: (artifacts.write_json(workdir / "tune.json", out),
                                    artifacts.write_text(workdir / "tune.md", format_tune(out))))  # one writer
    return out


def format_tune(out: Mapping[str, Any]) -> str:
    lines = [f"# Settings chosen on validation (a {out['validation_fraction']:.0%} carve of the train split)", ""]
    if "instruction" in out:
        lines += ["## Answer instruction", "", "| name | greedy accuracy | by level | T=1 parse rate |",
                  "|---|---|---|---|"]
        for name, r in out["instruction"]["candidates"].items():
            levels = ", ".join(f"{lv}: {v:.2f}" for lv, v in r["accuracy_by_level"].items())
            lines.append(f"| {name} | {r['greedy_accuracy']:.3f} (n={r['n']}) | {levels} | "
                         f"{r['sample_parse_rate']:.2f} |")
        lines += ["", f"Chosen: **{out['instruction']['chosen']}**", ""]
    if "temperature" in out:
        lines += ["## Sampling temperature", "",
                  "AUROC against greedy correctness on validation of the target (consistency-bin accuracy) and of "
                  "raw consistency; modal = greedy: share of questions whose modal sample is the greedy answer; "
                  "spread: standard deviation of the train targets.", "",
                  "| temperature | target AUROC | consistency AUROC | modal = greedy | train target mean / spread |",
                  "|---|---|---|---|---|"]
        for t, r in out["temperature"]["candidates"].items():
            lines.append(f"| {t} | {_fmt_interval(r['target_auroc'])} ({r['n_correct']}/{r['n_wrong']}) | "
                         f"{_fmt_interval(r['consistency_auroc'])} | "
                         f"{r['modal_is_greedy']:.2f} | {r['train_target_mean']:.3f} / {r['train_target_std']:.3f} |")
        lines += ["", f"Chosen: **{out['temperature']['chosen']:g}**", ""]
    if "training" in out:
        lines += ["## Training settings", "",
                  "Gain: paired difference vs base on validation (AUC for S, debiased AUC_c for C).", "",
                  "| point | task | gain | accuracy changed |", "|---|---|---|---|"]
        for e in out["training"]["points"]:
            for task, t in e["tasks"].items():
                gain = "n/a" if t["gain"] is None else f"{t['gain']:+.3f}"
                lines.append(f"| {e['name']} | {task} | {gain} | {'yes' if t['accuracy_changed'] else 'no'} |")
        lines += ["", f"Chosen: **{out['training']['chosen']}**", ""]
    return "\n".join(lines)
