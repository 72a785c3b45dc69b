"""Paper 2 explanations: styles and templates, the selection rule, confidence-balanced sampling, and the
items file `metacog explain` writes (tiny random model, procedural questions)."""

from __future__ import annotations

import collections
import json

import pytest

from metacog_jax.perception import explanations as expl
from metacog_jax.perception import study

from conftest import REPO, read_strict_json


def test_templates_cover_every_study_style_and_follow_method_example():
    t = expl.default_templates()
    assert tuple(t) == expl.STYLE_NAMES
    assert expl.instruction(t, "not_sure_long", "B") == (
        "Write an explanation why you are not sure that the answer is B. In your explanation, mention that you "
        "are not sure and include the answer. Start with 'I am'.")
    assert expl.instruction(t, "default", "B") == (
        "Provide an explanation for the answer you gave. In your explanation, you must include the answer.")
    assert "as few words as possible" in expl.instruction(t, "sure_short", "C")
    assert "somewhat sure the answer is D" in expl.instruction(t, "somewhat_sure_uncertainty_only", "D")
    assert expl.check_templates(t) == t
    with pytest.raises(ValueError, match="missing styles"):
        expl.check_templates({k: v for k, v in t.items() if k != "sure_short"})
    with pytest.raises(ValueError, match="sure_long.*question"):
        expl.check_templates(dict(t, sure_long="Say {question} then {answer}"))


def test_generation_budget_by_length():
    assert expl.max_new_tokens_for("default", 96, 40) == 96
    assert expl.max_new_tokens_for("sure_long", 96, 40) == 96
    assert expl.max_new_tokens_for("sure_short", 96, 40) == 40
    assert expl.max_new_tokens_for("not_sure_uncertainty_only", 96, 40) == 40


@pytest.mark.parametrize("p, certainty", [
    (0.0, "not_sure"), (0.3, "not_sure"), (0.4, "not_sure"), (0.4 + 1e-9, "somewhat_sure"), (0.5, "somewhat_sure"),
    (0.6, "somewhat_sure"), (0.6 + 1e-9, "sure"), (1.0, "sure")])
def test_selection_rule_at_and_around_thresholds(p, certainty):
    assert expl.select_style(p, 0.4, 0.6) == f"{certainty}_long"
    assert expl.select_style(p, 0.4, 0.6, length="short") == f"{certainty}_short"


def test_selection_rule_rejects_bad_inputs():
    assert expl.select_style(0.5, 0.5, 0.5) == "not_sure_long"  # theta1 == theta2: no "somewhat" band
    with pytest.raises(ValueError, match="outside"):
        expl.select_style(1.2)
    with pytest.raises(ValueError, match="theta1"):
        expl.select_style(0.5, 0.7, 0.6)
    with pytest.raises(ValueError, match="length"):
        expl.select_style(0.5, length="medium")


def _pool(counts_per_bin: dict[int, int], n_bins: int = 5) -> list[dict]:
    items = []
    for b, count in counts_per_bin.items():
        for k in range(count):
            items.append({"id": f"{b}-{k}", "model_confidence": (b + (k + 0.5) / (count + 1)) / n_bins})
    return items


def _bin_counts(items, n_bins=5):
    return collections.Counter(expl.confidence_bin(x["model_confidence"], n_bins) for x in items)


def test_stratified_sample_balances_bins():
    pool = _pool({0: 6, 1: 6, 2: 6, 3: 6, 4: 6})
    got = expl.stratified_sample(pool, 10, n_bins=5, seed=3)
    assert sorted(_bin_counts(got).values()) == [2, 2, 2, 2, 2]
    assert [pool.index(x) for x in got] == sorted(pool.index(x) for x in got)  # pool order
    assert expl.stratified_sample(pool, 10, n_bins=5, seed=3) == got  # deterministic
    assert expl.stratified_sample(pool, 10, n_bins=5, seed=4) != got  # the seed picks within bins


def test_stratified_sample_short_bins_give_all_they_have():
    pool = _pool({0: 20, 2: 3, 4: 10})
    got = expl.stratified_sample(pool, 12, n_bins=5, seed=0)
    counts = _bin_counts(got)
    assert len(got) == 12 and counts[2] == 3
    assert sorted([counts[0], counts[4]]) == [4, 5]
    # A larger n keeps the smaller sample (the order is prefix-consistent), and n beyond the pool gives all.
    assert set(x["id"] for x in got) <= set(x["id"] for x in expl.stratified_sample(pool, 20, n_bins=5, seed=0))
    assert len(expl.stratified_sample(pool, 100, n_bins=5, seed=0)) == len(pool)
    with pytest.raises(ValueError, match="outside"):
        expl.stratified_sample([{"model_confidence": 1.5}], 1, n_bins=5)


def test_run_explain_writes_a_study_items_file(tmp_path):
    from metacog_jax.config_utils import load_config
    from metacog_jax.perception.explain import run_explain

    config = load_config(str(REPO / "configs" / "explain.py") + ":tiny", ["explain.pool_size=6"])
    assert config.model.name == "random" and config.explain.max_new_tokens_long <= 8
    path = run_explain(config, tmp_path, domain="comparison", n=4)
    assert path == tmp_path / "explain" / "items.jsonl"
    items = study.load_items(path)
    assert len(items) == 4
    summary = read_strict_json(tmp_path / "explain" / "summary.json")
    details = {d["item_id"]: d for d in summary["details"]}
    for item in items:
        assert tuple(item.explanations) == expl.STYLE_NAMES
        assert all(text.strip() for text in item.explanations.values())
        assert item.selected_style == expl.select_style(item.model_confidence, config.explain.theta1,
                                                        config.explain.theta2)
        d = details[item.item_id]
        assert item.model_answer in "ABCDEFGHIJ"[:len(item.options)]
        assert item.correct == (d["gold"] == [item.model_answer])
        assert item.model_confidence == pytest.approx(max(d["option_probs"]))
    # Exactly the study's fields, nothing else.
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"item_id", "question", "options", "model_answer", "correct", "model_confidence",
                          "explanations", "selected_style"}
    assert summary["n_items"] == 4 and sum(summary["selected_bin_counts"]) == 4
