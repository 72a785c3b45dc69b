"""The eval stage end to end on a tiny random model with hand-made sample records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from metacog_jax.data import procedural, prompts
from metacog_jax.evaluation import metrics, run

SINGLE_METRICS = {"accuracy", "mean_confidence", "ece", "ace", "brier", "auroc", "aurc"}
RAW_PAIR_METRICS = {"auc_c", "auc_c_auroc", "auc_a", "auc_a_auroc", "q1_choice_rate"}
PAIR_METRICS = RAW_PAIR_METRICS | {"bt_auroc", "bt_spearman_consistency"}

from conftest import read_strict_json


def sample_record(q, greedy_answer, correct, consistency):
    """A record in the sample stage's shape (only the fields evaluate reads need to be right)."""
    return {"id": q.id, "domain": q.domain, "split": q.split, "kind": q.kind,
            "samples": [{"text": f"The answer is {greedy_answer}", "answer": greedy_answer, "correct": correct}],
            "modal_answer": greedy_answer, "modal_count": 1, "consistency": consistency, "modal_correct": correct,
            "greedy": {"text": f"The answer is {greedy_answer}", "answer": greedy_answer, "correct": correct}}


@pytest.fixture(scope="module")
def datasets():
    arith = procedural.generate("arithmetic", 5, seed=1, split="test")
    comp = procedural.generate("comparison", 4, seed=1, split="test")
    arith_correct = [True, False, True, False, True]
    arith_cons = [1.0, 0.3, 0.8, 0.3, 0.5]
    arith_records = [sample_record(q, q.answers[0] if ok else "123456", ok, c)
                     for q, ok, c in zip(arith, arith_correct, arith_cons)]
    arith_records[3]["greedy"]["answer"] = None  # unparseable greedy answer: shown as "unknown"
    comp_correct = [True, True, False, True]
    comp_cons = [0.9, 0.9, 0.2, 0.6]
    comp_records = [sample_record(q, q.answers[0] if ok else "A" if q.answers[0] != "A" else "B", ok, c)
                    for q, ok, c in zip(comp, comp_correct, comp_cons)]
    comp_records.append(sample_record(procedural.generate("comparison", 1, seed=9)[0], "A", True, 1.0))  # extra
    return {"arith": (arith, arith_records), "compare": ([q.to_json() for q in comp], comp_records)}


ROLES = {"arith": "in_domain", "compare": "out_of_domain"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_writes_items_pairs_and_metrics(tiny_model, smol_tokenizer, datasets, tmp_path):
    out = run.evaluate(tiny_model, smol_tokenizer, datasets, scale="0-10", role_of=ROLES, n_pairs=6, seed=3,
                       batch_size=4, n_resamples=40, out_dir=tmp_path)
    on_disk = read_strict_json(tmp_path / "metrics.json")
    assert on_disk == out
    assert out["ece_definition"] == metrics.ECE_DEFINITION
    assert out["scale"] == "0-10" and out["labels"] == list(prompts.confidence_scale("0-10").labels)
    assert out["label_terminator"] is not None  # " 1" is a token prefix of " 10" in SmolLM2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind

    for name, (questions, records) in datasets.items():
        entry = out["datasets"][name]
        assert entry["role"] == ROLES[name] and entry["n"] == len(questions)
        by_id = {r["id"]: r for r in records}
        ids = [q["id"] if isinstance(q, dict) else q.id for q in questions]
        rows = read_jsonl(tmp_path / f"{name}.jsonl")
        single = [r for r in rows if r["task"] == "single"]
        pairs = [r for r in rows if r["task"] == "pairwise"]
        assert [r["id"] for r in single] == ids
        for r in single:
            assert r["answer"] == by_id[r["id"]]["greedy"]["answer"]
            assert r["correct"] == by_id[r["id"]]["greedy"]["correct"]
            assert r["prompt_tokens"] > 20
            assert len(r["distribution"]) == 11 and sum(r["distribution"]) == pytest.approx(1.0)
            assert r["expected"] == pytest.approx(float(np.dot(r["distribution"], np.arange(11) / 10)), abs=1e-9)

        # Every metric with an interval; the point estimates agree with the item files.
        assert set(entry["single"]["metrics"]) == SINGLE_METRICS
        assert entry["single"]["n_correct"] + entry["single"]["n_wrong"] == len(questions)
        assert entry["single"]["n_correct"] == sum(by_id[i]["greedy"]["correct"] for i in ids)
        for m in entry["single"]["metrics"].values():
            assert set(m) == {"estimate", "low", "high", "n_undefined_resamples"}
            assert m["low"] <= m["estimate"] + 1e-9 and m["estimate"] <= m["high"] + 1e-9
        conf = np.asarray([r["expected"] for r in single])
        correct = np.asarray([r["correct"] for r in single], float)
        assert entry["single"]["metrics"]["accuracy"]["estimate"] == pytest.approx(correct.mean())
        assert entry["single"]["metrics"]["ece"]["estimate"] == pytest.approx(float(metrics.ece(conf, correct)),
                                                                              abs=1e-6)
        assert entry["single"]["metrics"]["auroc"]["estimate"] == pytest.approx(float(metrics.auroc(conf, correct)),
                                                                                abs=1e-6)

        n_all = len(ids) * (len(ids) - 1) // 2
        assert len(pairs) == entry["pairwise"]["n"] == min(6, n_all)
        assert len({frozenset(p["ids"]) for p in pairs}) == len(pairs)  # distinct pairs
        assert set(entry["pairwise"]["metrics"]) == PAIR_METRICS
        assert set(entry["pairwise_raw"]["metrics"]) == RAW_PAIR_METRICS
        p_q1 = np.asarray([p["p_q1"] for p in pairs])
        p_swapped = np.asarray([p["p_q1_swapped"] for p in pairs])
        p_tilde = np.asarray([p["p_tilde"] for p in pairs])
        np.testing.assert_allclose(p_tilde, 0.5 * (p_q1 + 1 - p_swapped), atol=1e-12)
        c = np.asarray([[by_id[i]["consistency"] for i in p["ids"]] for p in pairs])
        y = np.asarray([[by_id[i]["greedy"]["correct"] for i in p["ids"]] for p in pairs], float)
        assert [p["consistency"] for p in pairs] == c.tolist()
        assert entry["pairwise"]["n_consistency_differs"] == int(np.sum(c[:, 0] != c[:, 1]))
        assert entry["pairwise"]["n_mixed"] == int(np.sum(y[:, 0] != y[:, 1]))
        for block, p in (("pairwise_raw", p_q1), ("pairwise", p_tilde)):  # raw: one order; primary: debiased
            got = entry[block]["metrics"]
            for key, value in (("auc_c", metrics.auc_c(p, c[:, 0], c[:, 1])),
                               ("auc_a", metrics.auc_a(p, y[:, 0], y[:, 1]))):
                value = float(value)
                assert (got[key]["estimate"] is None) == np.isnan(value)
                if not np.isnan(value):
                    assert got[key]["estimate"] == pytest.approx(value, abs=1e-6)
        rate = np.mean(np.concatenate([p_q1 > 0.5, p_swapped > 0.5]))
        assert entry["pairwise"]["metrics"]["q1_choice_rate"]["estimate"] == pytest.approx(rate)
        for p in pairs:
            higher = None if p["consistency"][0] == p["consistency"][1] else (
                "Q1" if p["consistency"][0] > p["consistency"][1] else "Q2")
            assert p["higher_consistency"] == higher and 0.0 <= p["p_q1"] <= 1.0

    # Both display orders occur (position-bias randomization): some pair shows the later question first.
    rows = read_jsonl(tmp_path / "arith.jsonl")
    order = {r["id"]: k for k, r in enumerate(r for r in rows if r["task"] == "single")}
    shown_first_later = [order[p["ids"][0]] > order[p["ids"][1]] for p in rows if p["task"] == "pairwise"]
    assert any(shown_first_later) and not all(shown_first_later)


def test_verbalized_readout_counts_failures(tiny_model, smol_tokenizer, datasets, tmp_path):
    from metacog_jax.sampling import Sampler

    questions, records = datasets["arith"]
    out = run.evaluate(tiny_model, smol_tokenizer, {"arith": (questions[:3], records)}, scale="0-1",
                       role_of=ROLES, n_pairs=2, seed=0, batch_size=4, n_resamples=20, out_dir=tmp_path,
                       verbalized=True, sampler=Sampler(tiny_model, smol_tokenizer, batch_size=4),
                       verbalized_max_new_tokens=3)
    entry = out["datasets"]["arith"]
    rows = read_jsonl(tmp_path / "arith.jsonl")
    failures = sum(r["verbalized"]["value"] is None for r in rows if r["task"] == "single")
    assert entry["verbalized_single"]["n_parse_failures"] == failures
    assert entry["verbalized_pairwise"]["n"] == 2
    assert all("verbalized" in r for r in rows)


def test_bad_inputs_fail_clearly(tiny_model, smol_tokenizer, datasets, tmp_path):
    questions, records = datasets["arith"]
    kw = dict(role_of={"arith": "in_domain", "empty": "in_domain"}, n_pairs=2, seed=0, batch_size=4,
              n_resamples=10, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"dataset 'empty' is empty"):
        run.evaluate(tiny_model, smol_tokenizer, {"arith": (questions, records), "empty": ([], [])}, **kw)
    missing = rf"no sample record \(answers\) for 1 question\(s\), e.g. \['{questions[2].id}'\]"
    with pytest.raises(ValueError, match=missing):
        run.evaluate(tiny_model, smol_tokenizer, {"arith": (questions, records[:2] + records[3:])}, **kw)
    broken = [dict(r) for r in records]
    del broken[1]["greedy"]
    with pytest.raises(ValueError, match=rf"sample record '{questions[1].id}': field 'greedy'"):
        run.evaluate(tiny_model, smol_tokenizer, {"arith": (questions, broken)}, **kw)
    with pytest.raises(ValueError, match=r"dataset 'other': role must be one of"):
        run.evaluate(tiny_model, smol_tokenizer, {"other": (questions, records)}, **kw)
    assert not (tmp_path / "metrics.json").exists()


class MergingTokenizer:
    """SmolLM2's tokenizer, except that a confidence written after "score is" merges with it (as some
    tokenizers merge a space into the next token), so scale labels cannot be scored on their own."""

    def __init__(self, base):
        self._base = base

    def __getattr__(self, name):
        return getattr(self._base, name)

    def encode(self, text, **kw):
        ids = self._base.encode(text, **kw)
        if text.startswith(prompts.CONFIDENCE_PREFIX + " "):
            return ids[:-2] + [ids[-1]]
        return ids


def test_untokenizable_scale_fails_before_scoring(tiny_model, smol_tokenizer, datasets, tmp_path):
    questions, records = datasets["arith"]
    with pytest.raises(ValueError, match=r"confidence scale '0-1': labels cannot be scored with this tokenizer"):
        run.evaluate(tiny_model, MergingTokenizer(smol_tokenizer), {"arith": (questions, records)}, scale="0-1",
                     role_of=ROLES, n_pairs=2, seed=0, batch_size=4, n_resamples=10, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_resume_reuses_scored_datasets_only_when_inputs_match(tiny_model, smol_tokenizer, datasets, tmp_path,
                                                              monkeypatch):
    from metacog_jax.evaluation import scoring

    calls = []
    real = scoring.score_single
    monkeypatch.setattr(scoring, "score_single", lambda *a, **k: calls.append(1) or real(*a, **k))
    questions, records = datasets["compare"]
    kw = dict(scale="0-1", role_of=ROLES, n_pairs=3, seed=0, batch_size=4, n_resamples=20, out_dir=tmp_path,
              resume=True, tag="step 0")
    first = run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, records)}, **kw)
    again = run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, records)}, **kw)
    assert len(calls) == 1 and again == first
    run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, records)}, **dict(kw, tag="step 100"))
    regraded = [dict(r, greedy=dict(r["greedy"], correct=not r["greedy"]["correct"])) for r in records]
    run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, regraded)}, **dict(kw, tag="step 100"))
    assert len(calls) == 3
    # A run with other settings killed between its rows file and its metrics file: the earlier settings'
    # metrics must not be paired with the rows now on disk.
    from metacog_jax import artifacts

    real_write_json = artifacts.write_json

    def killed(path, *a, **k):
        if Path(path).name == "compare.metrics.json":
            raise KeyboardInterrupt
        return real_write_json(path, *a, **k)

    monkeypatch.setattr(artifacts, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, records)}, **dict(kw, n_pairs=2))
    monkeypatch.setattr(artifacts, "write_json", real_write_json)
    run.evaluate(tiny_model, smol_tokenizer, {"compare": (questions, regraded)}, **dict(kw, tag="step 100"))
    assert len(calls) == 5  # scored afresh, not reused


def test_the_eval_tag_names_the_model_and_checkpoint(tmp_path):
    from metacog_jax import pipeline
    from metacog_jax.experiment_config import default_config

    c = default_config()
    base = pipeline.eval_model_tag(c, tmp_path, 0)
    other = default_config()
    other.model.dtype = "bfloat16" if c.model.dtype != "bfloat16" else "float32"
    assert pipeline.eval_model_tag(other, tmp_path, 0) != base
    other = default_config()
    other.train.steps = c.train.steps * 2
    assert pipeline.eval_model_tag(other, tmp_path, 0) == base  # an untrained model does not depend on it
    checkpoint = tmp_path / "checkpoints" / "100"
    checkpoint.mkdir(parents=True)
    trained = pipeline.eval_model_tag(c, tmp_path, 100)
    assert trained != base and pipeline.eval_model_tag(other, tmp_path, 100) != trained
    os.utime(checkpoint, ns=(1, 1))  # the same step written again (retrained)
    assert pipeline.eval_model_tag(c, tmp_path, 100) != trained
