"""Choosing settings on validation: the carve from train, the answer instruction, `metacog tune`."""

from __future__ import annotations

import json

import pytest

from metacog_jax import config_utils, pipeline, tuning
from metacog_jax.data import procedural, prompts, splits
from metacog_jax.data.self_consistency import SamplesError
from metacog_jax.experiment_config import validate


def test_validation_is_carved_from_train_only():
    keys = [f"k{i}" for i in range(4000)]
    for key in keys:
        split = splits.assign_split(key, 0.2)
        carved = splits.carve_validation(key, split, 0.3)
        assert carved == split or (split == "train" and carved == "validation")
    share = sum(splits.carve_validation(k, "train", 0.3) == "validation" for k in keys) / len(keys)
    assert 0.27 < share < 0.33
    with pytest.raises(ValueError, match="validation_fraction"):
        splits.carve_validation("k", "train", 1.0)


def test_procedural_validation_split_is_disjoint_and_keeps_twins_together():
    kw = dict(test_fraction=0.4, levels=(1, 2), validation_fraction=0.3)
    parts = {s: procedural.generate("arithmetic", 40, seed=0, split=s, **kw) for s in ("train", "validation", "test")}
    keys = {s: {q.meta["canonical"] for q in qs} for s, qs in parts.items()}
    assert not keys["train"] & keys["validation"] and not keys["validation"] & keys["test"]
    assert not keys["train"] & keys["test"] and all(q.split == "validation" for q in parts["validation"])
    # Without a carve the validation items are ordinary train items, and test is unchanged.
    assert all(splits.assign_split(key, 0.4) == "train" for key in keys["validation"])
    assert procedural.generate("arithmetic", 40, seed=0, split="test", test_fraction=0.4, levels=(1, 2)) == parts["test"]


def test_evaluate_on_validation_loads_no_test_question(tmp_path):
    c = config_utils.load_config("configs/tiny.py")
    base = pipeline.load_domain_questions(c, tmp_path)
    with c.unlocked():
        c.data.evaluate_on = "validation"
    validate(c)
    tuned = pipeline.load_domain_questions(c, tmp_path)
    for name, qs in tuned.items():
        test_keys = {q.meta["canonical"] for q in base[name] if q.split == "test"}
        assert not test_keys & {q.meta["canonical"] for q in qs}  # no real test item anywhere
        assert {q.split for q in qs} <= {"train", "test"}  # validation items are labelled test for the stages
    with c.unlocked():
        c.data.validation_fraction = 0.0
    with pytest.raises(ValueError, match="validation_fraction"):
        validate(c)


def test_answer_instruction_names_and_templates(smol_tokenizer):
    q = procedural.generate("arithmetic", 1, seed=0, split="test", levels=(1,))[0]
    assert prompts.answer_prompt(smol_tokenizer, q) == prompts.answer_prompt(smol_tokenizer, q, "sentence")
    followed = prompts.answer_prompt(smol_tokenizer, q, "followed")
    assert "Reply with 'The answer is' followed by the final number." in followed
    assert "Say: {hint}!" .replace("{hint}", "the final number") in prompts.answer_prompt(smol_tokenizer, q,
                                                                                         "Say: {hint}!")
    with pytest.raises(ValueError, match="neither one of"):
        prompts.answer_prompt(smol_tokenizer, q, "shout")


def test_sample_cache_refuses_another_instruction(tiny_model, smol_tokenizer, tmp_path):
    from metacog_jax.data.self_consistency import sample_questions
    from metacog_jax.sampling import Sampler

    sampler = Sampler(tiny_model, smol_tokenizer, batch_size=4)
    qs = procedural.generate("arithmetic", 2, seed=0, split="train", levels=(1,))
    out = tmp_path / "samples" / "arithmetic.jsonl"
    sample_questions(sampler, qs[:1], out, k=2, max_new_tokens=4, progress=False)
    with pytest.raises(SamplesError, match="answer instruction"):
        sample_questions(sampler, qs, out, k=2, max_new_tokens=4, progress=False, instruction="followed")
    sample_questions(sampler, qs, out, k=2, max_new_tokens=4, progress=False, instruction="sentence")  # same wording


def test_temperature_step_refuses_bad_temperatures(tmp_path):
    c = config_utils.load_config("configs/tiny.py")
    for bad in ((), (1.0, 0.0)):
        with pytest.raises(ValueError, match="--temperatures"):
            tuning.choose_temperature(c, tmp_path, bad)
    assert not any(tmp_path.iterdir())  # refused before loading a model or writing anything


def test_grid_parsing():
    grid = tuning.parse_grid(["train.lr=3e-4,1e-3", "train.steps=24"])
    assert grid == {"train.lr": ["3e-4", "1e-3"], "train.steps": ["24"]}
    assert tuning.grid_points(grid) == [{"train.lr": "3e-4", "train.steps": "24"},
                                        {"train.lr": "1e-3", "train.steps": "24"}]
    assert tuning.grid_points({}) == [{}]
    for bad in (["train.lr"], ["=1"], ["train.lr=1", "train.lr=2"]):
        with pytest.raises(ValueError, match="grid"):
            tuning.parse_grid(bad)


@pytest.mark.slow
def test_tune_end_to_end_on_the_tiny_model(tmp_path):
    c = config_utils.load_config("configs/tiny.py:task=single")
    out = tuning.run_tune(c, tmp_path, grid=["train.lr=1e-3", "targets.answer_source=greedy"], tasks=("single",),
                          temperatures=(1.0, 0.5))
    assert out["instruction"]["chosen"] in prompts.ANSWER_INSTRUCTIONS
    # The temperature step: each candidate's target AUROC is the Mann-Whitney statistic of its validation
    # targets against greedy correctness, the winner has the largest, and training used its samples.
    temps = out["temperature"]["candidates"]
    assert set(temps) == {"1", "0.5"}
    for t, row in temps.items():
        data = tuning.data_dir(tmp_path, float(t))
        greedy = {json.loads(line)["id"]: json.loads(line)["greedy"]["correct"]
                  for line in (data / "samples" / "arithmetic.jsonl").open()}
        val = [json.loads(line) for line in (data / "targets" / "single.jsonl").open()]
        val = [r for r in val if r["split"] == "test"]
        pos = [r["target_raw"] for r in val if greedy[r["question_id"]]]
        neg = [r["target_raw"] for r in val if not greedy[r["question_id"]]]
        assert (row["n_correct"], row["n_wrong"]) == (len(pos), len(neg))
        if pos and neg:
            mw = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
            assert row["target_auroc"]["estimate"] == pytest.approx(mw, abs=1e-5)
    auc = {t: r["target_auroc"]["estimate"] for t, r in temps.items()}
    best = max(temps, key=lambda t: (-1.0 if auc[t] is None or auc[t] != auc[t] else auc[t], float(t)))
    assert out["temperature"]["chosen"] == float(best)
    assert (tuning.data_dir(tmp_path, float(best)) / "samples" / "DONE").exists()
    assert set(out["instruction"]["candidates"]) == set(prompts.ANSWER_INSTRUCTIONS)
    point = out["training"]["points"][0]
    assert point["name"] == "lr=1e-3,answer_source=greedy"
    assert "auroc" in point["tasks"]["single"]["differences"]["arithmetic"]
    # A point that sets a target option trains on its own targets, built from the shared samples.
    runs = tmp_path / f"runs_T{out['temperature']['chosen']:g}"
    summary = json.loads((runs / point["name"] / "data" / "targets" / "summary.json").read_text())
    assert summary["answer_source"] == "greedy"
    assert (runs / point["name"] / "data" / "samples").resolve() == \
        (tuning.data_dir(tmp_path, out["temperature"]["chosen"]) / "samples").resolve()
    assert json.loads((tmp_path / "tune.json").read_text())["evaluate_on"] == "validation"
    assert "Chosen:" in (tmp_path / "tune.md").read_text()
    # Only validation questions were sampled: none of them is a test question of the final run.
    final = {q.meta["canonical"] for q in pipeline.load_domain_questions(c, tmp_path / "x")["arithmetic"]
             if q.split == "test"}
    data = tuning.data_dir(tmp_path, out["temperature"]["chosen"])
    sampled = {json.loads(line)["id"] for line in (data / "samples" / "arithmetic.jsonl").open()}
    questions = {json.loads(line)["id"]: json.loads(line) for line in (data / "questions" / "arithmetic.jsonl").open()}
    assert not final & {questions[i]["meta"]["canonical"] for i in sampled}
