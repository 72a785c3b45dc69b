"""The report over conditions, from hand-written eval outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metacog_jax.evaluation import metrics, report

from conftest import read_strict_json


def ci(estimate, low=None, high=None):
    return {"estimate": estimate, "low": estimate - 0.05 if low is None else low,
            "high": estimate + 0.05 if high is None else high, "n_undefined_resamples": 0}


def dataset_entry(role, acc, ece, auroc, auc_c, auc_a):
    return {"role": role, "n": 4,
            "single": {"n": 4, "n_correct": 2, "n_wrong": 2, "metrics": {"accuracy": ci(acc), "ece": ci(ece), "auroc": ci(auroc),
                                           "brier": ci(0.2), "ace": ci(0.1), "aurc": ci(0.3),
                                           "mean_confidence": ci(0.6)}},
            "pairwise": {"n": 6, "n_consistency_differs": 5, "n_mixed": 3,
                         "metrics": {"auc_c": ci(auc_c), "auc_a": ci(auc_a) if auc_a is not None else
                                     {"estimate": None, "low": None, "high": None, "n_undefined_resamples": 40},
                                     "q1_choice_rate": ci(0.5)}}}


ITEMS = [(0.95, True), (0.9, True), (0.85, False), (0.3, False)]
ITEMS_S = [(0.9, True), (0.7, True), (0.4, False), (0.2, True)]  # S: other confidences and answers


def write_run(root, name, datasets, ece_definition=metrics.ECE_DEFINITION, items=ITEMS):
    eval_dir = root / name / "eval"
    eval_dir.mkdir(parents=True)
    m = {"ece_definition": ece_definition, "scale": "0-1", "datasets": datasets}
    (eval_dir / "metrics.json").write_text(json.dumps(m))
    for ds in datasets:
        rows = [{"task": "single", "id": f"{ds}/{i}", "expected": c, "correct": y} for i, (c, y) in enumerate(items)]
        rows.append({"task": "pairwise", "ids": [f"{ds}/0", f"{ds}/1"], "p_q1": 0.7})
        (eval_dir / f"{ds}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / name


@pytest.fixture
def runs(tmp_path):
    base = write_run(tmp_path, "base", {
        "gsm8k": dataset_entry("in_domain", 0.40, 0.30, 0.60, 0.55, 0.52),
        "mmlu": dataset_entry("in_domain", 0.50, 0.20, 0.62, 0.50, 0.50),
        "medqa": dataset_entry("out_of_domain", 0.30, 0.25, 0.55, 0.51, None)})
    single = write_run(tmp_path, "single", {
        "gsm8k": dataset_entry("in_domain", 0.41, 0.10, 0.70, 0.56, 0.51),
        "mmlu": dataset_entry("in_domain", 0.50, 0.06, 0.74, 0.49, 0.52),
        "medqa": dataset_entry("out_of_domain", 0.29, 0.15, 0.58, 0.50, 0.55)}, items=ITEMS_S)
    # A condition evaluated on fewer datasets, passed as its eval directory.
    pairwise = write_run(tmp_path, "pairwise", {"gsm8k": dataset_entry("in_domain", 0.40, 0.29, 0.61, 0.70, 0.66)})
    return {"base": base, "S": single, "C": pairwise / "eval"}


def test_report_tables_numbers_and_figures(runs, tmp_path):
    out = tmp_path / "report"
    rep = report.build_report(runs, out)
    assert rep == read_strict_json(out / "report.json")
    assert rep["conditions"] == ["base", "S", "C"]
    assert rep["datasets"] == {"in_domain": ["gsm8k", "mmlu"], "out_of_domain": ["medqa"]}
    assert rep["ece_definition"] == metrics.ECE_DEFINITION

    # (a) main table cells, with intervals; undefined and missing cells are "n/a".
    assert report.format_cell(rep["main"]["S"]["gsm8k"]["ece"]) == "0.100 [0.05, 0.15]"
    assert report.format_cell(rep["main"]["base"]["mmlu"]["auc"]) == "0.620 [0.57, 0.67]"
    assert report.format_cell(rep["main"]["C"]["gsm8k"]["auc_c"]) == "0.700 [0.65, 0.75]"
    assert report.format_cell(rep["main"]["base"]["medqa"]["auc_a"]) == "n/a"
    assert rep["main"]["C"]["medqa"] == {"ece": None, "auc": None, "auc_c": None, "auc_a": None, "bt_auc": None}

    # (b) transfer: condition minus base, per dataset and averaged per role.
    t = rep["transfer"]
    assert set(t) == {"S", "C"}
    assert t["S"]["datasets"]["gsm8k"]["ece"] == pytest.approx(-0.20)
    assert t["S"]["datasets"]["gsm8k"]["auc"] == pytest.approx(0.10)
    assert t["S"]["datasets"]["gsm8k"]["auc_c"] == pytest.approx(0.01)
    assert t["S"]["datasets"]["medqa"]["auc_a"] is None  # base undefined there
    assert t["S"]["mean_by_role"]["in_domain"]["ece"] == pytest.approx(np.mean([-0.20, -0.14]))
    assert t["S"]["mean_by_role"]["in_domain"]["auc_a"] == pytest.approx(np.mean([-0.01, 0.02]))
    assert t["S"]["mean_by_role"]["out_of_domain"]["auc"] == pytest.approx(0.03)
    assert t["C"]["datasets"]["gsm8k"]["auc_c"] == pytest.approx(0.15)
    assert t["C"]["datasets"]["gsm8k"]["ece"] == pytest.approx(-0.01)
    assert t["C"]["datasets"]["mmlu"]["ece"] is None
    assert t["C"]["mean_by_role"]["out_of_domain"]["auc_c"] is None

    # (c) accuracy before/after.
    assert rep["accuracy"]["gsm8k"]["S"]["estimate"] == 0.41
    assert rep["accuracy"]["gsm8k"]["S"]["delta_vs_base"] == pytest.approx(0.01)
    assert rep["accuracy"]["medqa"]["C"] is None

    # (d) reliability diagrams: a PNG per condition x dataset with items.
    assert rep["diagrams"]["C"]["medqa"] is None
    for cond in ("base", "S"):
        for ds in ("gsm8k", "mmlu", "medqa"):
            png = out / rep["diagrams"][cond][ds]
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    md = (out / "report.md").read_text()
    # Every Markdown table keeps one column count (no stray "|" inside a cell).
    for block in md.split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("|")]
        assert len({line.count("|") for line in table}) <= 1, block
    assert metrics.ECE_DEFINITION in md  # (e)
    s_row = next(line for line in md.splitlines() if line.startswith("| S | 0.100"))
    # Each AUC with the counts it rests on, flagged below MIN_COUNT (4 items, 5 and 3 usable pairs here).
    assert s_row.split(" | ")[1:5] == ["0.100 [0.05, 0.15]", "0.700 [0.65, 0.75] (2/2) few",
                                       "0.560 [0.51, 0.61] (5) few", "0.510 [0.46, 0.56] (3) few"]
    assert rep["counts"]["S"]["gsm8k"] == {"ece": None, "auc": [2, 2], "auc_c": [5], "auc_a": [3], "bt_auc": [2, 2]}
    # Differences: paired (with intervals) from the single-task rows; these pairwise rows hold one
    # presentation only, so the pairwise columns fall back to differences of the estimates.
    (cb, yb), (cs, ys) = (np.asarray(v, float).T for v in (ITEMS, ITEMS_S))
    d = rep["paired"]["S"]["datasets"]["gsm8k"]
    assert d["ece"]["estimate"] == pytest.approx(float(metrics.ece(cs, ys) - metrics.ece(cb, yb)), abs=1e-6)
    assert d["accuracy"]["estimate"] == pytest.approx(0.25)
    assert d["ece"]["low"] <= d["ece"]["estimate"] <= d["ece"]["high"]
    assert "auc_c" not in d
    assert rep["accuracy"]["gsm8k"]["S"]["paired_delta"] == d["accuracy"]
    ece_mean = rep["paired"]["S"]["mean_by_role"]["in_domain"]["ece"]
    assert ece_mean["estimate"] == pytest.approx(d["ece"]["estimate"]) and ece_mean["n_datasets"] == 2
    assert f"| S | gsm8k | {report.format_diff(d['ece'])} | {report.format_diff(d['auroc'])} | +0.010 | -0.010 |" in md
    assert "| C | gsm8k | +0.000 [+0.00, +0.00] | +0.000 [+0.00, +0.00] | +0.150 | +0.140 |" in md
    assert f"]({rep['diagrams']['S']['medqa']})" in md
    assert "| gsm8k | 0.400 [0.35, 0.45] | 0.410 [0.36, 0.46], Δ +0.250 [" in md

    text = report.format_main_table(rep)
    lines = text.splitlines()
    assert lines[0].split() == ["role", "dataset", "condition", "ECE", "AUC", "AUC_c", "AUC_a", "BT", "AUC"]
    assert any(line.split()[:4] == ["out-of-domain", "medqa", "C", "n/a"] for line in lines)
    assert any(line.startswith("in-domain") and " S " in line and "0.100 [0.05, 0.15]" in line for line in lines)
    assert lines[-1] == metrics.ECE_DEFINITION


def test_report_without_base_skips_transfer(runs, tmp_path):
    rep = report.build_report({"S": runs["S"]}, tmp_path / "r")
    assert rep["base"] is None and rep["transfer"] == {}
    assert "no transfer table" in (tmp_path / "r" / "report.md").read_text()


def test_report_input_errors(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="run the eval stage for this condition"):
        report.build_report({"base": tmp_path / "nowhere"}, tmp_path / "r")
    odd = write_run(tmp_path, "odd", {"gsm8k": dataset_entry("out_of_domain", 0.4, 0.3, 0.6, 0.5, 0.5)})
    with pytest.raises(ValueError, match=r"dataset 'gsm8k' is in_domain in condition 'base' but out_of_domain in 'X'"):
        report.build_report({"base": runs["base"], "X": odd}, tmp_path / "r")
    other = write_run(tmp_path, "other", {"gsm8k": dataset_entry("in_domain", 0.4, 0.3, 0.6, 0.5, 0.5)},
                      ece_definition="top-label ECE, 15 bins")
    with pytest.raises(ValueError, match="ECE definition differs"):
        report.build_report({"base": runs["base"], "Y": other}, tmp_path / "r")
    with pytest.raises(ValueError, match="run_dirs is empty"):
        report.build_report({}, tmp_path / "r")
