"""The report: compare conditions (base, S, C, C+S, ...) from their eval stages' outputs.

Reads each run's ``eval/metrics.json`` and ``eval/<dataset>.jsonl`` (per-item rows) and writes
``report.md`` + ``report.json`` (+ ``figures/*.png``) with:
  (a) the main table: per condition, on every dataset (in-domain, then out-of-domain), ECE and AUC of the
      single task and AUC_c and AUC_a of the pairwise task (debiased readout where the eval scored both
      orders), each with its 95% bootstrap interval and the counts it rests on (correct / wrong answers
      for AUC, pairs with differing consistency for AUC_c, mixed pairs for AUC_a), flagged when a count
      is below MIN_COUNT;
  (b) paired differences vs the base condition on the same questions (evaluation/paired.py): ECE, AUC,
      accuracy, AUC_c and AUC_a of each trained condition minus base, with paired cluster-bootstrap
      intervals, per dataset and averaged per domain group; this is also the task-transfer table (does S
      move the pairwise scores? does C move the single-task scores?);
  (c) answer accuracy per dataset and condition, and a guard: a condition whose paired accuracy change
      has an interval excluding 0 is marked (fine-tuning confidence must not change the answers);
  (d) the mean probability mass the model puts on the label tokens (confidence labels, Q1/Q2);
  (e) reliability diagrams per condition x dataset (bin counts drawn on the bars);
  (f) the ECE definition used.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from metacog_jax import artifacts
from metacog_jax.artifacts import iter_jsonl
from metacog_jax.evaluation import metrics, paired, plots
from metacog_jax.evaluation.run import ROLES, read_metrics

# (key in report, task block in metrics.json, metric name there, header, better direction)
MAIN_METRICS = (
    ("ece", "single", "ece", "ECE", "lower"),
    ("auc", "single", "auroc", "AUC", "higher"),
    ("auc_c", "pairwise", "auc_c", "AUC_c", "higher"),
    ("auc_a", "pairwise", "auc_a", "AUC_a", "higher"),
    ("bt_auc", "pairwise", "bt_auroc", "BT AUC", "higher"),
)
ROLE_TITLES = {"in_domain": "in-domain", "out_of_domain": "out-of-domain"}
# An AUC resting on fewer correct or wrong answers (or fewer usable pairs) than this is flagged.
MIN_COUNT = 10
# (key, header, better direction) of the paired differences shown; keys of paired.SINGLE/PAIRWISE_DIFFS.
DIFF_METRICS = (("ece", "ΔECE", "lower"), ("auroc", "ΔAUC", "higher"), ("auc_c", "ΔAUC_c", "higher"),
                ("auc_a", "ΔAUC_a", "higher"), ("bt_auroc", "ΔBT AUC", "higher"), ("accuracy", "Δaccuracy", "none"))
# Main-table key -> key of the same metric among the paired differences.
DIFF_KEY = {"ece": "ece", "auc": "auroc", "auc_c": "auc_c", "auc_a": "auc_a", "bt_auc": "bt_auroc"}


def _eval_dir(run_dir: Path) -> Path:
    """A run's eval folder: <run>/eval if it holds metrics.json, else the folder itself."""
    if (run_dir / "eval" / "metrics.json").is_file():
        return run_dir / "eval"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    raise FileNotFoundError(f"{run_dir}: neither {run_dir / 'eval' / 'metrics.json'} nor "
                            f"{run_dir / 'metrics.json'} exists; run the eval stage for this condition")


def _interval(block: Mapping[str, Any] | None, name: str) -> dict[str, float | None] | None:
    if not block:
        return None
    value = block.get("metrics", {}).get(name)
    if value is None or value.get("estimate") is None:
        return None
    return {"estimate": value["estimate"], "low": value.get("low"), "high": value.get("high")}


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def format_cell(value: Mapping[str, Any] | None, signed: bool = False) -> str:
    """'0.123 [0.10, 0.15]' (estimate, 95% interval), or '+0.123 [+0.01, +0.20]' with `signed` (a
    difference); 'n/a' when undefined."""
    if value is None or _num(value.get("estimate")) is None:
        return "n/a"
    low, high = _num(value.get("low")), _num(value.get("high"))
    sign = "+" if signed else ""
    ci = f" [{low:{sign}.2f}, {high:{sign}.2f}]" if low is not None and high is not None else ""
    return f"{value['estimate']:{sign}.3f}{ci}"


def _format_delta(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def format_diff(value: Mapping[str, Any] | None) -> str:
    """A difference and its paired interval: '+0.123 [+0.01, +0.20]'."""
    return format_cell(value, signed=True)


def _counts(e: Mapping[str, Any] | None, key: str) -> tuple[int, ...] | None:
    """The counts an AUC rests on: (correct, wrong) answers, or (usable pairs,)."""
    if not e:
        return None
    if key in ("auc", "bt_auc"):  # the Bradley-Terry scores rank the same correct / wrong answers
        s = e.get("single", {})
        return (s["n_correct"], s["n_wrong"]) if "n_correct" in s else None
    block = e.get("pairwise", {})
    name = {"auc_c": "n_consistency_differs", "auc_a": "n_mixed"}.get(key)
    return (block[name],) if name in block else None


def format_counted(value: Mapping[str, Any] | None, counts: tuple[int, ...] | None) -> str:
    """A cell with the counts behind it: '0.62 [0.51, 0.70] (12/28)', and ' few' when a count < MIN_COUNT."""
    cell = format_cell(value)
    if counts is None:
        return cell
    flag = " few" if min(counts) < MIN_COUNT else ""
    return f"{cell} ({'/'.join(map(str, counts))}){flag}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _read_single_items(path: Path) -> tuple[np.ndarray, np.ndarray]:
    conf, correct = [], []
    for line_no, row in iter_jsonl(path):
        if row.get("task") != "single":
            continue
        if "expected" not in row or "correct" not in row:
            raise ValueError(f"{path}:{line_no}: single item lacks 'expected' or 'correct'")
        conf.append(float(row["expected"]))
        correct.append(float(bool(row["correct"])))
    return np.asarray(conf), np.asarray(correct)


def build_report(run_dirs: Mapping[str, str | os.PathLike], out_dir: str | os.PathLike, *, base: str = "base",
                 n_bins: int = 10, n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Compare conditions and write report.md, report.json and figures/ under `out_dir`.

    Args:
      run_dirs: condition name -> run directory (holding eval/metrics.json) or the eval directory itself;
        the order gives the table rows.
      out_dir: output folder.
      base: the untrained condition the transfer and accuracy tables compare against (tables that need it
        are left out when it is not among the conditions).
      n_bins: bins of the reliability diagrams (10 = the ECE bins).
      n_resamples, seed: the paired cluster bootstrap of the differences vs base.

    Returns:
      The report.json content: conditions, datasets by role, main / transfer / accuracy tables, diagram
      paths (relative to out_dir), the ECE definition.

    Raises:
      FileNotFoundError: a run without metrics.json (named). ValueError: no conditions, a dataset whose role
      differs between runs, or a run whose ECE definition differs from this code's.
    """
    if not run_dirs:
        raise ValueError("run_dirs is empty: give at least one condition")
    out_dir = Path(out_dir)
    runs: dict[str, tuple[Path, dict[str, Any]]] = {}
    for cond, path in run_dirs.items():
        eval_dir = _eval_dir(Path(path))
        runs[cond] = (eval_dir, read_metrics(eval_dir))

    roles: dict[str, str] = {}
    role_source: dict[str, str] = {}
    for cond, (eval_dir, m) in runs.items():
        if m.get("ece_definition") not in (None, metrics.ECE_DEFINITION):
            raise ValueError(f"{eval_dir / 'metrics.json'}: ECE definition differs from this code's "
                             f"({m.get('ece_definition')!r}); re-run its eval stage before comparing")
        for ds, entry in m.get("datasets", {}).items():
            role = entry.get("role")
            if role not in ROLES:
                raise ValueError(f"{eval_dir / 'metrics.json'}: dataset {ds!r} has role {role!r}, expected one of "
                                 f"{ROLES}")
            if ds in roles and roles[ds] != role:
                raise ValueError(f"dataset {ds!r} is {roles[ds]} in condition {role_source[ds]!r} but {role} in "
                                 f"{cond!r}")
            roles.setdefault(ds, role)
            role_source.setdefault(ds, cond)
    by_role = {r: [ds for ds in roles if roles[ds] == r] for r in ROLES}
    conditions = list(runs)

    def entry(cond: str, ds: str) -> Mapping[str, Any] | None:
        return runs[cond][1].get("datasets", {}).get(ds)

    main: dict[str, dict[str, dict[str, Any]]] = {}
    counts: dict[str, dict[str, dict[str, Any]]] = {}
    accuracy: dict[str, dict[str, Any]] = {ds: {} for ds in roles}
    label_mass: dict[str, dict[str, Any]] = {}
    graded_by: dict[str, dict[str, Any]] = {ds: {} for ds in roles}
    for cond in conditions:
        main[cond], counts[cond], label_mass[cond] = {}, {}, {}
        for ds in roles:
            e = entry(cond, ds)
            main[cond][ds] = {key: (_interval(e.get(block), name) if e else None)
                              for key, block, name, _, _ in MAIN_METRICS}
            counts[cond][ds] = {key: _counts(e, key) for key, *_ in MAIN_METRICS}
            accuracy[ds][cond] = _interval(e.get("single"), "accuracy") if e else None
            graded_by[ds][cond] = e.get("single", {}).get("graded_by") if e else None
            label_mass[cond][ds] = ({task: e.get(task, {}).get("mean_label_mass") for task in ("single", "pairwise")}
                                    if e else None)

    # Paired differences vs base on the same questions, from the per-item rows of both conditions.
    paired_diffs: dict[str, Any] = {}
    if base in runs:
        rows = {cond: {ds: paired.ItemRows(runs[cond][0] / f"{ds}.jsonl") for ds in roles
                       if entry(cond, ds) is not None and (runs[cond][0] / f"{ds}.jsonl").is_file()}
                for cond in conditions}
        for cond in conditions:
            if cond == base:
                continue
            per_ds, samples = {}, {}
            for ds in roles:
                if ds in rows[cond] and ds in rows[base]:
                    per_ds[ds], samples[ds] = paired.paired_differences(rows[cond][ds], rows[base][ds], n_resamples,
                                                                        seed)
            means = {role: paired.mean_of_differences({ds: (per_ds[ds], samples[ds]) for ds in names
                                                       if ds in per_ds}) for role, names in by_role.items()}
            paired_diffs[cond] = {"datasets": per_ds, "mean_by_role": means}

    transfer: dict[str, Any] = {}
    if base in runs:
        for cond in conditions:
            if cond == base:
                continue
            per_ds = {}
            for ds in roles:
                per_ds[ds] = {}
                for key, *_ in MAIN_METRICS:
                    now, ref = main[cond][ds][key], main[base][ds][key]
                    per_ds[ds][key] = (now["estimate"] - ref["estimate"]) if now and ref else None
            means = {}
            for role, names in by_role.items():
                means[role] = {}
                for key, *_ in MAIN_METRICS:
                    vals = [per_ds[ds][key] for ds in names if per_ds[ds][key] is not None]
                    means[role][key] = float(np.mean(vals)) if vals else None
            transfer[cond] = {"datasets": per_ds, "mean_by_role": means}
        for ds in roles:
            ref = accuracy[ds].get(base)
            for cond in conditions:
                now = accuracy[ds].get(cond)
                if now is not None:
                    now["delta_vs_base"] = (now["estimate"] - ref["estimate"]) if ref else None
                    diff = paired_diffs.get(cond, {}).get("datasets", {}).get(ds, {}).get("accuracy")
                    if diff is not None:
                        now["paired_delta"] = diff
                        low, high = _num(diff.get("low")), _num(diff.get("high"))
                        now["changed"] = low is not None and high is not None and (low > 0 or high < 0)

    diagrams: dict[str, dict[str, str | None]] = {}
    used: set[str] = set()
    for cond in conditions:
        diagrams[cond] = {}
        for ds in roles:
            items = runs[cond][0] / f"{ds}.jsonl"
            if entry(cond, ds) is None or not items.is_file():
                diagrams[cond][ds] = None
                continue
            conf, correct = _read_single_items(items)
            if len(conf) == 0:
                diagrams[cond][ds] = None
                continue
            name = f"reliability__{_safe(cond)}__{_safe(ds)}.png"
            k = 1
            while name in used:  # distinct conditions may sanitize alike ("C+S", "C S")
                k += 1
                name = f"reliability__{_safe(cond)}-{k}__{_safe(ds)}.png"
            used.add(name)
            plots.reliability_diagram(conf, correct, out_dir / "figures" / name, f"{cond} — {ds}", n_bins=n_bins)
            diagrams[cond][ds] = f"figures/{name}"

    report = {
        "ece_definition": metrics.ECE_DEFINITION,
        "base": base if base in runs else None,
        "conditions": conditions,
        "runs": {cond: str(runs[cond][0]) for cond in conditions},
        "datasets": by_role,
        "metrics": [{"key": k, "task": b, "name": n, "header": h, "better": d} for k, b, n, h, d in MAIN_METRICS],
        "main": main,
        "counts": counts,
        "min_count": MIN_COUNT,
        "paired": paired_diffs,
        "transfer": transfer,
        "accuracy": accuracy,
        "graded_by": graded_by,
        "label_mass": label_mass,
        "diagrams": diagrams,
    }
    report = artifacts.json_ready(report)  # what is returned is what report.json holds
    artifacts.write_json(out_dir / "report.json", report)
    artifacts.write_text(out_dir / "report.md", _markdown(report))
    return report


# -- rendering ------------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _main_cell(report: Mapping[str, Any], cond: str, ds: str, key: str) -> str:
    counts = report.get("counts", {}).get(cond, {}).get(ds, {}).get(key)
    return format_counted(report["main"][cond][ds][key], tuple(counts) if counts else None)


def _diff_cell(report: Mapping[str, Any], cond: str, ds: str | None, key: str, role: str | None = None) -> str:
    """A paired difference with its interval, else the plain difference of estimates (no interval)."""
    p = report.get("paired", {}).get(cond)
    if p is not None:
        block = p["datasets"].get(ds) if ds is not None else p["mean_by_role"].get(role)
        if block and key in block:
            return format_diff(block[key])
    t = report["transfer"][cond]
    main_key = next((k for k, v in DIFF_KEY.items() if v == key), None)
    if main_key is None:
        return "n/a"
    value = t["datasets"][ds][main_key] if ds is not None else t["mean_by_role"][role][main_key]
    return _format_delta(value)


def _markdown(report: Mapping[str, Any]) -> str:
    conds, base = report["conditions"], report["base"]
    out = ["# Metacognition report", "",
           f"Conditions: {', '.join(conds)}." + (f" Base: {base}." if base else " No base condition given."), "",
           f"**{report['ece_definition']}**", "",
           "Cells: estimate [95% bootstrap interval]. ECE lower is better; AUC (single task), AUC_c and AUC_a "
           "(pairwise task, debiased readout over both presentation orders) higher is better, 0.5 = chance; "
           "BT AUC: the AUROC of per-question Bradley-Terry scores fit to the pairwise preferences, on the "
           "single task's scale. "
           "In parentheses the counts each AUC rests on: correct/wrong answers (AUC), pairs whose "
           f"consistencies differ (AUC_c), mixed pairs (AUC_a); 'few' marks a count below {MIN_COUNT}.", "",
           "## Main results", ""]
    for role, names in report["datasets"].items():
        if not names:
            continue
        out += [f"### {ROLE_TITLES[role]}", ""]
        header = ["condition"] + [f"{ds} {h}" for ds in names for _, _, _, h, _ in MAIN_METRICS]
        rows = [[c] + [_main_cell(report, c, ds, k) for ds in names for k, *_ in MAIN_METRICS] for c in conds]
        out += [_md_table(header, rows), ""]

    out += ["## Paired differences vs base (task transfer)", ""]
    if not report["transfer"]:
        out += ["No base condition among the runs, so no transfer table.", ""]
    else:
        out += ["Each trained condition minus base on the same test questions, with 95% paired cluster-bootstrap "
                "intervals (questions resampled once for both conditions; the mean over a domain group averages "
                "the datasets' resamples). Single-task training moving only ΔECE and ΔAUC, and pairwise "
                "training only ΔAUC_c and ΔAUC_a, means no transfer between tasks. Cells without an interval "
                "are differences of the two estimates (eval files without per-item rows in both orders).", ""]
        header = ["condition", "dataset"] + [h for _, h, _ in DIFF_METRICS]
        rows = []
        for cond in report["transfer"]:
            for role, names in report["datasets"].items():
                for ds in names:
                    rows.append([cond, ds] + [_diff_cell(report, cond, ds, k) for k, *_ in DIFF_METRICS])
                if names:
                    rows.append([cond, f"mean {ROLE_TITLES[role]}"]
                                + [_diff_cell(report, cond, None, k, role) for k, *_ in DIFF_METRICS])
        out += [_md_table(header, rows), ""]

    out += ["## Answer accuracy", ""]
    all_ds = [ds for names in report["datasets"].values() for ds in names]
    if base:
        out += [f"'changed' marks a condition whose paired accuracy difference vs {base} has an interval "
                "excluding 0: its confidence numbers then describe different answers.", ""]
    header = ["dataset"] + conds + ([f"largest abs. change vs {base}"] if base else [])
    rows = []
    for ds in all_ds:
        row = [ds]
        for c in conds:
            v = report["accuracy"][ds].get(c)
            cell = format_cell(v)
            if v is not None and v.get("paired_delta") is not None:
                cell += f", Δ {format_diff(v['paired_delta'])}" + (" changed" if v.get("changed") else "")
            row.append(cell)
        if base:
            deltas = [abs(v["delta_vs_base"]) for v in report["accuracy"][ds].values()
                      if v is not None and v.get("delta_vs_base") is not None]
            row.append(f"{max(deltas):.3f}" if deltas else "n/a")
        rows.append(row)
    out += [_md_table(header, rows), ""]
    graded = report.get("graded_by", {})
    if any(v for per in graded.values() for v in per.values()):
        out += ["Who graded the answers (data/graders.py: a rule, or an LLM judge where config.grading asks for "
                "one): answers per grader.", ""]
        rows = [[ds] + ["; ".join(f"{k} {n}" for k, n in (graded.get(ds, {}).get(c) or {}).items()) or "n/a"
                        for c in conds] for ds in all_ds]
        out += [_md_table(["dataset"] + conds, rows), ""]

    mass = report.get("label_mass", {})
    if any(x is not None for per in mass.values() for m in per.values() if m for x in m.values()):
        out += ["## Label mass", "", "Mean probability the model puts on the label tokens before renormalizing "
                "(confidence labels for the single task, Q1/Q2 for the pairwise task).", ""]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
        rows = [[c] + [f"{fmt(m.get('single'))} / {fmt(m.get('pairwise'))}" if (m := mass[c].get(ds)) else "n/a"
                       for ds in all_ds] for c in conds]
        out += [_md_table(["condition"] + [f"{ds} single / pairwise" for ds in all_ds], rows), ""]

    out += ["## Reliability diagrams (single task)", "",
            "Bars: accuracy per confidence bin (the ECE bins), dots: mean confidence, n: items in the bin.", ""]
    header = ["condition"] + all_ds
    rows = [[c] + [f"![{c} {ds}]({p})" if (p := report["diagrams"][c].get(ds)) else "n/a" for ds in all_ds]
            for c in conds]
    out += [_md_table(header, rows), ""]
    return "\n".join(out)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def format_main_table(report: Mapping[str, Any]) -> str:
    """The main table as fixed-width text for a terminal (one line per (dataset, condition)), then the paired
    differences vs base with their intervals."""
    keys = [k for k, *_ in MAIN_METRICS]
    headers = [h for _, _, _, h, _ in MAIN_METRICS]
    rows = []
    for role, names in report["datasets"].items():
        for ds in names:
            for c in report["conditions"]:
                rows.append([ROLE_TITLES[role], ds, c] + [_main_cell(report, c, ds, k) for k in keys])
    header = ["role", "dataset", "condition"] + headers
    lines = _aligned([header, ["-" * len(h) for h in header]] + rows)
    if report.get("paired"):
        lines += ["", f"Paired differences vs {report['base']} (same questions; 95% paired cluster-bootstrap "
                      "intervals):"]
        header = ["role", "dataset", "condition"] + [h for _, h, _ in DIFF_METRICS]
        rows = [[ROLE_TITLES[role], ds, c] + [_diff_cell(report, c, ds, k) for k, *_ in DIFF_METRICS]
                for role, names in report["datasets"].items() for ds in names for c in report["paired"]]
        lines += _aligned([header] + rows)
    return "\n".join(lines + ["", report["ece_definition"]])
