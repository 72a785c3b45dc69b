"""Paper-2 calibration gap on a hand-built study whose ECEs and AUCs are worked out below."""

from __future__ import annotations

import csv
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from metacog_jax.evaluation import bootstrap
from metacog_jax.perception import gap

# Ten items. Model confidence 0.85 on q0-q4 (q0-q3 correct), 0.25 on q5-q9 (q5, q6 correct).
ITEMS = [
    {"item_id": f"q{i}", "correct": i in (0, 1, 2, 3, 5, 6), "model_confidence": 0.85 if i < 5 else 0.25,
     "question": f"question {i}"}
    for i in range(10)
]
CORRECT = {f"q{i}": i in (0, 1, 2, 3, 5, 6) for i in range(10)}

from conftest import read_strict_json


def _row(participant, condition, item, rating, style="default", attention=0):
    return {"participant_id": participant, "condition": condition, "item_id": item, "style": style,
            "rating": rating, "own_answer": "", "is_attention_check": attention,
            "created_at": "2025-01-01T00:00:00Z"}


def _ratings():
    rows = []
    # condition "default": A rates correct items 0.95 and incorrect ones 0.65 (AUC 1);
    # B rates everything 0.75 (AUC 1/2).
    for item, ok in CORRECT.items():
        rows.append(_row("A", "default", item, 0.95 if ok else 0.65))
        rows.append(_row("B", "default", item, 0.75))
    # condition "selected": C rates only correctly answered items (no AUC: one class);
    # D rates q0 (correct) 0.95, q7 and q8 (incorrect) 0.15 and 0.35 (AUC 1).
    for item in ("q0", "q1", "q2", "q3", "q5", "q6"):
        rows.append(_row("C", "selected", item, 0.85, style="sure_short"))
    rows += [_row("D", "selected", "q0", 0.95, style="sure_long"),
             _row("D", "selected", "q7", 0.15, style="not_sure_long"),
             _row("D", "selected", "q8", 0.35, style="not_sure_long")]
    return rows


ATTENTION = [  # not in the items file, absurd ratings: must be ignored, only counted
    _row("A", "default", "__attention_1", 0.15, style="attention_check", attention=1),
    _row("C", "selected", "__attention_1", "", style="attention_check", attention=1),
]

# ---- expected values, worked out by hand --------------------------------------------------------
# default (all 10 items rated)
#   model ECE: bin 8: 5 items, conf .85, acc 4/5 -> .05; bin 2: 5 items, conf .25, acc 2/5 -> .15
#              ECE = .5 * .05 + .5 * .15 = .10
#   model AUC: correct {.85 x4, .25 x2} vs incorrect {.85 x1, .25 x3}: 24 pairs;
#              .85>.25: 4*3 = 12, ties .85/.85: 4*1 -> 2, ties .25/.25: 2*3 -> 3 => 17/24
#   human ECE (20 ratings): A .95 x6 correct -> 6*.05 = .3; A .65 x4 incorrect -> 4*.65 = 2.6;
#              B .75 x10, acc .6 -> 10*.15 = 1.5  => 4.4 / 20 = .22
#   human AUC: (1 + 1/2) / 2 = .75
# selected (items q0-q3, q5-q8 rated)
#   model ECE: bin 8: q0-q3 all correct -> 4*.15 = .6; bin 2: q5,q6 correct, q7,q8 not -> 4*.25 = 1.0
#              => 1.6 / 8 = .2
#   model AUC: correct {.85 x4, .25 x2} vs incorrect {.25 x2}: 8 wins + 4 ties -> 10/12
#   human ECE (9 ratings): C .85 x6 correct -> .9; D .95 correct -> .05; .15 -> .15; .35 -> .35
#              => 1.45 / 9
#   human AUC: C skipped (all correct), D = 1 => 1
# all conditions pooled (29 ratings, all 10 items)
#   human ECE: bin 9: .95 x7 correct -> .35; bin 6: 2.6; bin 7: 1.5; bin 8: .9; bin 1: .15; bin 3: .35
#              => 5.85 / 29;   human AUC: (1 + 1/2 + 1) / 3
EXPECTED = {
    "default": dict(model_ece=0.10, model_auc=17 / 24, human_ece=0.22, human_auc=0.75, n_without_auc=0),
    "selected": dict(model_ece=0.2, model_auc=10 / 12, human_ece=1.45 / 9, human_auc=1.0, n_without_auc=1),
    None: dict(model_ece=0.10, model_auc=17 / 24, human_ece=5.85 / 29, human_auc=2.5 / 3, n_without_auc=1),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    with open(d / "items.jsonl", "w") as f:
        for item in ITEMS:
            f.write(json.dumps(item) + "\n")
    with open(d / "ratings.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(gap.RATINGS_COLUMNS))
        writer.writeheader()
        writer.writerows(_ratings()[:5] + ATTENTION + _ratings()[5:])
    return d / "items.jsonl", d / "ratings.csv"


@pytest.fixture(scope="module")
def gaps(files):
    items = gap.read_items_jsonl(files[0])
    ratings = gap.read_ratings_csv(files[1])
    return {cond: gap.calibration_gap(items, ratings, condition=cond, n_resamples=100, seed=0)
            for cond in ("default", "selected", None)}


@pytest.mark.parametrize("condition", ["default", "selected", None])
def test_gap_matches_hand_computed_values(gaps, condition):
    result, exp = gaps[condition], EXPECTED[condition]
    m = {k: v["estimate"] for k, v in result["metrics"].items()}
    for name in ("model_ece", "model_auc", "human_ece", "human_auc"):
        assert m[name] == pytest.approx(exp[name], abs=1e-6), name
    assert m["calibration_gap"] == pytest.approx(exp["human_ece"] - exp["model_ece"], abs=1e-6)
    assert m["discrimination_gap"] == pytest.approx(exp["model_auc"] - exp["human_auc"], abs=1e-6)
    assert result["n_participants_without_auc"] == exp["n_without_auc"]
    assert result["condition"] == ("all" if condition is None else condition)


def test_counts_and_attention_checks(gaps):
    assert (gaps["default"]["n_ratings"], gaps["default"]["n_participants"], gaps["default"]["n_items"]) == (20, 2, 10)
    assert (gaps["selected"]["n_ratings"], gaps["selected"]["n_participants"], gaps["selected"]["n_items"]) == (9, 2, 8)
    assert gaps["default"]["n_attention_checks_excluded"] == 1
    assert gaps["selected"]["n_attention_checks_excluded"] == 1
    assert gaps[None]["n_attention_checks_excluded"] == 2
    assert "equal-width" in gaps[None]["ece_definition"]


def test_attention_checks_do_not_change_the_gap(gaps):
    without = gap.calibration_gap(ITEMS, _ratings(), condition=None, n_resamples=100, seed=0)
    assert without["n_attention_checks_excluded"] == 0
    for name, value in without["metrics"].items():
        assert value == pytest.approx(gaps[None]["metrics"][name], nan_ok=True), name


def test_bootstrap_intervals_bracket_the_estimates(gaps):
    for name in ("calibration_gap", "discrimination_gap", "human_ece", "human_auc"):
        m = gaps[None]["metrics"][name]
        assert m["low"] <= m["estimate"] <= m["high"], name
        assert m["high"] > m["low"], name  # resampling actually varies the data


def test_two_way_resample_weights_equal_explicit_duplication():
    # A resample with participant counts (A: 2, B: 0, C: 1, D: 1) and item counts must give the same
    # numbers as a table in which those participants and items are copied that many times.
    ratings = _ratings()
    data = gap.gap_data(ITEMS, ratings)
    p_counts = {"A": 2, "B": 0, "C": 1, "D": 1}
    i_counts = {f"q{i}": c for i, c in enumerate([1, 2, 0, 1, 1, 3, 1, 2, 1, 1])}
    got = gap._gap_statistics(jnp.asarray([p_counts[p] for p in data.participant_ids], float),
                              jnp.asarray([i_counts[i] for i in data.item_ids], float),
                              *gap._gap_operands(data))

    items_dup = [{**it, "item_id": f"{it['item_id']}#{k}"} for it in ITEMS for k in range(i_counts[it["item_id"]])]
    ratings_dup = [{**r, "participant_id": f"{r['participant_id']}#{j}", "item_id": f"{r['item_id']}#{k}"}
                   for r in ratings for j in range(p_counts[r["participant_id"]])
                   for k in range(i_counts[r["item_id"]])]
    dup = gap.gap_data(items_dup, ratings_dup)
    explicit = gap._gap_statistics(jnp.ones(len(dup.participant_ids)), jnp.ones(len(dup.item_ids)),
                                   *gap._gap_operands(dup))
    for name in gap.GAP_METRICS:
        assert float(got[name]) == pytest.approx(float(explicit[name]), abs=1e-5), name


def test_two_way_bootstrap_draws_full_size_resamples():
    out = bootstrap.bootstrap_two_way(lambda r, c: {"rows": r.sum(), "cols": c.sum(), "r0": r[0]},
                                      n_rows=7, n_cols=5, n_resamples=50, seed=3)
    assert out["r0"]["estimate"] == 1.0  # the point estimate uses every row once
    assert out["rows"]["low"] == out["rows"]["high"] == 7
    assert out["cols"]["low"] == out["cols"]["high"] == 5
    assert out["r0"]["high"] > out["r0"]["low"]  # counts vary between resamples


def test_mean_rating_by_style():
    by_style = gap.mean_rating_by_style(_ratings() + ATTENTION, ITEMS)
    assert list(by_style) == ["default", "sure_short", "sure_long", "not_sure_long"]
    assert by_style["default"]["n"] == 20
    assert by_style["default"]["mean"] == pytest.approx((6 * 0.95 + 4 * 0.65 + 10 * 0.75) / 20)
    assert by_style["default"]["mean_correct"] == pytest.approx((0.95 + 0.75) / 2)
    assert by_style["not_sure_long"]["mean"] == pytest.approx(0.25)
    assert by_style["not_sure_long"]["n_correct"] == 0 and math.isnan(by_style["not_sure_long"]["mean_correct"])
    assert math.isnan(by_style["sure_long"]["sem"])  # a single rating has no standard error


def test_gap_report_writes_files(tmp_path):
    report = gap.gap_report(ITEMS, _ratings() + ATTENTION, tmp_path / "report", n_resamples=100)  # as `gaps`
    out = tmp_path / "report"
    data = read_strict_json(out / "gap.json")  # strict JSON: NaN written as null
    assert set(data["conditions"]) == {"default", "selected"}
    assert data["overall"]["metrics"]["human_auc"]["estimate"] == pytest.approx(2.5 / 3, abs=1e-6)
    md = (out / "gap.md").read_text()
    assert "10 equal-width confidence bins" in md
    assert "| default | 2 | 20 | 10 |" in md and "| all | 4 | 29 | 10 |" in md
    for name in ("reliability_model_default", "reliability_human_selected", "reliability_human_all",
                 "mean_rating_by_style"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert len(report["figures"]) == 9  # 2 per condition and all, 2 post-hoc, 1 by style
    # Three items carry long 3 x 3 styles here: too few to cross-fit θ over 5 folds, which the report says.
    assert set(report["posthoc"]) == {"short", "all"} and set(report["posthoc_skipped"]) == {"long"}
    assert "Post-hoc selection not computed: selected (post hoc, long): cross-fitting over 5 folds" in md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


# ---- malformed input ----------------------------------------------------------------------------


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(r) + "\n")
    return path


GOOD = ["p1", "default", "q0", "default", "0.8", "", "0", "2025-01-01"]


@pytest.mark.parametrize("bad_row, message", [
    (["p1", "default", "q0", "default", "1.5", "", "0", "t"], r"ratings\.csv:3: column rating = '1\.5' is outside"),
    (["p1", "default", "q0", "default", "eighty", "", "0", "t"], r"ratings\.csv:3: column rating must be a number"),
    (["p1", "default", "q0", "default", "nan", "", "0", "t"], r"ratings\.csv:3: column rating"),
    (["p1", "default", "q0", "default", "", "", "0", "t"], r"ratings\.csv:3: column rating"),
    (["p1", "default", "q0", "default", "0.5", "", "maybe", "t"], r"ratings\.csv:3: column is_attention_check"),
    (["", "default", "q0", "default", "0.5", "", "0", "t"], r"ratings\.csv:3: column participant_id is empty"),
    (["p1", "default", "q0", "", "0.5", "", "0", "t"], r"ratings\.csv:3: column style is empty"),
    (["p1", "default", "q0", "default", "0.5"], r"ratings\.csv:3: too few values"),
    (GOOD + ["extra"], r"ratings\.csv:3: more values"),
])
def test_malformed_ratings_csv(tmp_path, bad_row, message):
    path = _write_csv(tmp_path / "ratings.csv", gap.RATINGS_COLUMNS, [GOOD, bad_row])
    with pytest.raises(ValueError, match=message):
        gap.read_ratings_csv(path)


def test_ratings_csv_missing_column_and_attention_rows(tmp_path):
    header = [c for c in gap.RATINGS_COLUMNS if c != "rating"]
    path = _write_csv(tmp_path / "ratings.csv", header, [GOOD[:4] + GOOD[5:]])
    with pytest.raises(ValueError, match=r"ratings\.csv:1: missing column\(s\) \['rating'\]"):
        gap.read_ratings_csv(path)
    # an attention check may leave style and rating empty; extra columns are kept
    path = _write_csv(tmp_path / "ok.csv", list(gap.RATINGS_COLUMNS) + ["note"],
                      [GOOD + ["x"], ["p1", "default", "__att", "", "", "", "1", "t", ""]])
    rows = gap.read_ratings_csv(path)
    assert rows[0]["rating"] == 0.8 and rows[0]["is_attention_check"] is False and rows[0]["note"] == "x"
    assert rows[1]["is_attention_check"] is True and rows[1]["rating"] is None


@pytest.mark.parametrize("line, message", [
    ('{"item_id": "q1", "correct": true', r"items\.jsonl:2: invalid JSON"),
    ('{"item_id": "q1", "correct": true}', r"items\.jsonl:2: missing field\(s\) \['model_confidence'\]"),
    ('{"item_id": "q1", "correct": true, "model_confidence": 1.2}', r"items\.jsonl:2: model_confidence = 1\.2"),
    ('{"item_id": "q1", "correct": "perhaps", "model_confidence": 0.2}', r"items\.jsonl:2: correct must be"),
    ('{"item_id": "q0", "correct": false, "model_confidence": 0.2}', r"items\.jsonl:2: duplicate item_id 'q0'"),
    ('[1, 2]', r"items\.jsonl:2: expected a JSON object"),
])
def test_malformed_items_jsonl(tmp_path, line, message):
    path = tmp_path / "items.jsonl"
    path.write_text('{"item_id": "q0", "correct": 1, "model_confidence": 0.5}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        gap.read_items_jsonl(path)


def test_unknown_item_and_empty_condition_rejected():
    with pytest.raises(ValueError, match=r"item_id 'q99' \(participant 'Z'\) is not in the items file"):
        gap.calibration_gap(ITEMS, _ratings() + [_row("Z", "default", "q99", 0.5)], n_resamples=1)
    with pytest.raises(ValueError, match=r"no non-attention-check ratings for condition 'nope'"):
        gap.calibration_gap(ITEMS, _ratings(), condition="nope", n_resamples=1)
    with pytest.raises(ValueError, match=r"rating = 80"):
        gap.calibration_gap(ITEMS, [_row("Z", "default", "q1", 80)], n_resamples=1)


# ---- the paper's post-hoc selection ----------------------------------------------------------------
# Three clusters of 20 items: model confidence 0.15 / 0.45 / 0.85, of which 0 / 6 / 20 are answered
# right. Six participants, one per style (not sure / somewhat sure / sure x long / short), rate every
# item: "not sure" 0.02, "somewhat sure" 0.3, "sure" 0.98. A rule with 0.15 <= θ1 < 0.45 <= θ2 < 0.85
# shows each cluster the style whose rating is nearest its accuracy. Every other rule pools clusters
# under one rating far from their joint accuracy; and no single style is calibrated for all items (the
# overall accuracy 0.43 is no style's rating), which ECE minimisation would otherwise prefer.
LEVELS = (("not_sure", 0.15, 0, 0.02), ("somewhat_sure", 0.45, 6, 0.3), ("sure", 0.85, 20, 0.98))
PH_ITEMS = [{"item_id": f"{name}{k}", "correct": k < n_right, "model_confidence": conf}
            for name, conf, n_right, _ in LEVELS for k in range(20)]


def _posthoc_ratings(jitter=0.0):
    rows = []
    for name, _, _, value in LEVELS:
        for length in ("long", "short"):
            style = f"{name}_{length}"
            for j, item in enumerate(PH_ITEMS):
                rows.append(_row(f"P-{style}", style, item["item_id"], value + jitter * ((j % 3) - 1), style=style))
    return rows + ATTENTION


def _np_ece(conf, correct, n_bins=10):
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return sum(np.mean(bins == b) * abs(conf[bins == b].mean() - correct[bins == b].mean())
               for b in range(n_bins) if np.any(bins == b))


def test_posthoc_selection_with_given_thresholds_keeps_the_rule_s_style():
    ratings = _posthoc_ratings(jitter=0.01)
    r = gap.posthoc_selection(PH_ITEMS, ratings, length="long", theta=(0.4, 0.6), n_resamples=20)
    # θ = (0.4, 0.6): 0.15 -> not sure, 0.45 -> somewhat sure, 0.85 -> sure; one long-style rating per item.
    level = {0.15: "not_sure", 0.45: "somewhat_sure", 0.85: "sure"}
    correct = {i["item_id"]: i["correct"] for i in PH_ITEMS}
    conf = {i["item_id"]: i["model_confidence"] for i in PH_ITEMS}
    kept = [row for row in ratings if not row["is_attention_check"]
            and row["style"] == f"{level[conf[row['item_id']]]}_long"]
    assert len(kept) == 60 and r["metrics"]["n_selected_ratings"]["estimate"] == 60
    expected = _np_ece([row["rating"] for row in kept], [correct[row["item_id"]] for row in kept])
    assert r["metrics"]["human_ece"]["estimate"] == pytest.approx(expected, abs=1e-6)
    assert r["metrics"]["model_ece"]["estimate"] == pytest.approx(0.15, abs=1e-6)
    assert r["theta"] == {"given": [0.4, 0.6]} and r["n_attention_checks_excluded"] == 0
    assert r["condition"] == "selected (post hoc, long)" and r["n_ratings"] == 180


def test_posthoc_selection_cross_fits_thresholds_on_the_other_folds():
    ratings = _posthoc_ratings()
    r = gap.posthoc_selection(PH_ITEMS, ratings, n_folds=4, n_resamples=20)
    for t1, t2 in r["theta"]["cross_fitted"]["per_fold"]:
        assert 0.15 <= t1 < 0.45 <= t2 < 0.85  # the rule under which people are best calibrated
    given = gap.posthoc_selection(PH_ITEMS, ratings, theta=(0.4, 0.6), n_resamples=20)
    assert r["metrics"]["human_ece"]["estimate"] == pytest.approx(given["metrics"]["human_ece"]["estimate"])
    assert r["metrics"]["n_selected_ratings"]["estimate"] == 120  # both lengths
    assert r["bootstrap"]["scheme"].endswith("θ refit in every resample")
    assert r["metrics"]["theta1"]["low"] <= r["metrics"]["theta1"]["estimate"] <= r["metrics"]["theta1"]["high"]
    # A fold's θ comes from the other folds only: reversing the ratings of fold 0's items leaves fold 0's
    # θ as it was (its own items are then judged with it, and are now badly calibrated).
    data = gap.gap_data(PH_ITEMS, [x for x in ratings if not x["is_attention_check"]])
    folds = gap._item_folds(data.item_ids, 4, 0)
    in_fold0 = {data.item_ids[i] for i in np.nonzero(folds == 0)[0]}
    spoiled = [dict(x, rating=1.0 - x["rating"]) if x["item_id"] in in_fold0 else x for x in ratings]
    again = gap.posthoc_selection(PH_ITEMS, spoiled, n_folds=4, n_resamples=20)  # r's compiled program
    assert again["theta"]["cross_fitted"]["per_fold"][0] == r["theta"]["cross_fitted"]["per_fold"][0]
    assert again["metrics"]["human_ece"]["estimate"] > r["metrics"]["human_ece"]["estimate"] + 0.1


def test_posthoc_selection_errors_name_the_problem():
    with pytest.raises(ValueError, match="no ratings in the 3 x 3 styles"):
        gap.posthoc_selection(ITEMS, _ratings() + ATTENTION, length="uncertainty_only")
    with pytest.raises(ValueError, match="length must be one of"):
        gap.posthoc_selection(PH_ITEMS, _posthoc_ratings(), length="medium")
    with pytest.raises(ValueError, match="theta1 <= theta2"):
        gap.posthoc_selection(PH_ITEMS, _posthoc_ratings(), theta=(0.7, 0.2))
    with pytest.raises(gap.TooFewItems, match="at least 61 rated items, got 60"):
        gap.posthoc_selection(PH_ITEMS, _posthoc_ratings(), n_folds=61)


def test_gap_report_adds_the_posthoc_table(tmp_path):
    report = gap.gap_report(PH_ITEMS, _posthoc_ratings(), tmp_path, n_resamples=20)
    assert list(report["posthoc"]) == ["long", "short", "all"]
    md = (tmp_path / "gap.md").read_text()
    assert "## Post-hoc selection (the paper's analysis)" in md and "θ cross-fitted: 5 folds" in md
    assert "| selected (post hoc, all lengths) |" in md
    assert (tmp_path / "reliability_human_posthoc_all.png").stat().st_size > 0
    assert report["posthoc"]["long"]["metrics"]["n_selected_ratings"]["estimate"] == 60
    assert report["posthoc_skipped"] == {}


def test_gap_command_takes_given_thresholds_and_names_a_bad_one(tmp_path, capsys):
    from metacog_jax import cli

    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in PH_ITEMS))
    ratings = tmp_path / "ratings.csv"
    with ratings.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(gap.RATINGS_COLUMNS))
        writer.writeheader()
        writer.writerows({k: r[k] for k in gap.RATINGS_COLUMNS} for r in _posthoc_ratings(jitter=0.01)
                         if r["style"].endswith("_long"))
    assert cli.main(["gap", f"--items={items}", f"--ratings={ratings}", f"--out={tmp_path / 'g'}",
                     "--theta=0.4,0.6", "--resamples=20"]) == 0
    assert "θ given: 0.4, 0.6" in capsys.readouterr().out
    assert cli.main(["gap", f"--items={items}", f"--ratings={ratings}", "--theta=0.4"]) == 2
    assert "--theta='0.4': expected two numbers" in capsys.readouterr().err
    assert cli.main(["gap", f"--items={items}", f"--ratings={ratings}", f"--out={tmp_path / 'none'}",
                     "--resamples=0"]) == 2
    assert "--resamples=0: expected at least 1" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # refused before anything was written
