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


def test_run_explain_writes_a_study_items_file(reference_run):
    config = _explain_config()
    assert config.model.name == "random" and config.explain.max_new_tokens_long <= 8
    workdir, _, _ = reference_run  # run_explain(config, workdir, domain="comparison", n=4)
    path = workdir / "explain" / "items.jsonl"
    items = study.load_items(path)
    assert len(items) == 4
    summary = read_strict_json(workdir / "explain" / "summary.json")
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


# -- dividing the work between processes, and resuming from explain/cache.jsonl ------------------------------
_OVERRIDES = ["explain.pool_size=6"]


def _explain_config(*overrides):
    from metacog_jax.config_utils import load_config

    return load_config(str(REPO / "configs" / "explain.py") + ":tiny", [*_OVERRIDES, *overrides])


class _Counts:
    """Counts the sampler's generate calls (with their token budgets) and the scorer's calls while active;
    ``fail_at`` makes generate call number ``fail_at`` raise (a kill part-way through)."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        from metacog_jax.evaluation import scoring
        from metacog_jax.sampling import Sampler

        self.generate, self.budgets, self.scoring = 0, [], 0
        generate, label_logprobs = Sampler.generate, scoring.label_logprobs

        def counted_generate(sampler, prompts, params, *args, **kwargs):
            self.generate += 1
            if fail_at is not None and self.generate == fail_at:
                raise KeyboardInterrupt(f"killed at generate call {self.generate}")
            self.budgets.append(params.max_new_tokens)
            return generate(sampler, prompts, params, *args, **kwargs)

        def counted_scoring(*args, **kwargs):
            self.scoring += 1
            return label_logprobs(*args, **kwargs)

        monkeypatch.setattr(Sampler, "generate", counted_generate)
        monkeypatch.setattr(scoring, "label_logprobs", counted_scoring)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted one-process run (n=4 of a 6-question pool): its workdir and call counts."""
    from metacog_jax.perception.explain import run_explain

    workdir = tmp_path_factory.mktemp("explain_reference")
    with pytest.MonkeyPatch.context() as mp:
        counts = _Counts(mp)
        path = run_explain(_explain_config(), workdir, domain="comparison", n=4)
    return workdir, path.read_bytes(), counts


def test_run_explain_writes_each_result_once_to_its_cache(reference_run):
    workdir, items, counts = reference_run
    rows = [json.loads(line) for line in (workdir / "explain" / "cache.jsonl").read_text().splitlines()]
    kinds = collections.Counter(r["kind"] for r in rows)
    summary = read_strict_json(workdir / "explain" / "summary.json")
    n_items = len(items.splitlines())
    assert kinds["confidence"] == summary["pool_size"] == 6
    # Every explanation generated is kept once (dropped items' too); one batch of 4 per generate call.
    assert kinds["explanation"] == 10 * (n_items + len(summary["dropped_empty_explanation"]))
    assert counts.generate == -(-kinds["explanation"] // 4) and len({r["key"] for r in rows}) == len(rows)
    assert summary["from_cache"] == {"confidences": 0, "explanations": 0}


@pytest.fixture
def two_fake_processes(monkeypatch):
    """Two processes played in turn by this one: every divided model call runs process 0's share, then
    process 1's, and gathers both (as multihost.gather_results does); process 0 alone writes. Returns a
    Counter of (what, process) -> batches run: what is "generate" (sampler) or "score" (scorer)."""
    import jax

    from metacog_jax import multihost, sampling
    from metacog_jax.evaluation import scoring

    me = {"index": 0}
    ran: collections.Counter = collections.Counter()

    def gather_results(fn):
        out = []
        for process in (0, 1):
            me["index"] = process
            try:
                out.append(fn())
            finally:
                me["index"] = 0
        return out

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost, "divided", lambda: True)
    monkeypatch.setattr(multihost, "owns", lambda b: b % 2 == me["index"])
    monkeypatch.setattr(multihost, "is_writer", lambda: me["index"] == 0)
    monkeypatch.setattr(multihost, "leader_value", lambda fn: fn())  # process 0 runs it, both get the value
    monkeypatch.setattr(multihost, "gather_results", gather_results)
    for module, name, what in ((sampling, "_generate", "generate"), (scoring, "_label_logprobs", "score")):
        def counted(*args, _fn=getattr(module, name), _what=what, **kwargs):
            ran[(_what, me["index"])] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return ran


def test_run_explain_divides_its_batches_between_processes(tmp_path, reference_run, two_fake_processes):
    from metacog_jax.perception.explain import run_explain

    ref_dir, ref_items, counts = reference_run
    path = run_explain(_explain_config(), tmp_path, domain="comparison", n=4)
    ran = two_fake_processes
    # Explanations: 10 batches, one per process per round; confidences: 2 scoring batches, one each.
    assert ran[("generate", 0)] == -(-counts.generate // 2) and ran[("generate", 1)] == counts.generate // 2
    assert ran[("score", 0)] == ran[("score", 1)] == 1
    # The same batches as one process makes: the same files, written once.
    assert path.read_bytes() == ref_items
    assert (tmp_path / "explain" / "cache.jsonl").read_bytes() == (ref_dir / "explain" / "cache.jsonl").read_bytes()


def test_run_explain_resumes_after_a_kill_with_nothing_redone(tmp_path, monkeypatch, reference_run):
    from metacog_jax.perception.explain import run_explain

    _, ref_items, ref_counts = reference_run
    with monkeypatch.context() as mp:
        _Counts(mp, fail_at=4)  # killed as the 4th batch of explanations starts
        with pytest.raises(KeyboardInterrupt):
            run_explain(_explain_config(), tmp_path, domain="comparison", n=4)
    assert not (tmp_path / "explain" / "items.jsonl").exists()
    cache = tmp_path / "explain" / "cache.jsonl"
    lines = cache.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6 + 3 * 4  # the pool's confidences and 3 batches of explanations
    with cache.open("ab") as f:  # and a kill mid-append: part of a line
        f.write(lines[-1][:50])
    counts = _Counts(monkeypatch)
    path = run_explain(_explain_config(), tmp_path, domain="comparison", n=4)
    assert path.read_bytes() == ref_items
    assert counts.scoring == 0 and counts.generate == ref_counts.generate - 3
    summary = read_strict_json(tmp_path / "explain" / "summary.json")
    assert summary["from_cache"] == {"confidences": 6, "explanations": 12}
    # Run again: everything comes from the cache.
    counts = _Counts(monkeypatch)
    assert run_explain(_explain_config(), tmp_path, domain="comparison", n=4).read_bytes() == ref_items
    assert counts.generate == counts.scoring == 0


def test_run_explain_cache_misses_when_a_setting_changes(tmp_path, monkeypatch, reference_run):
    import shutil

    from metacog_jax.perception.explain import model_identity, run_explain

    ref_dir, _, _ = reference_run
    (tmp_path / "explain").mkdir()
    shutil.copy(ref_dir / "explain" / "cache.jsonl", tmp_path / "explain" / "cache.jsonl")
    counts = _Counts(monkeypatch)
    run_explain(_explain_config("explain.max_new_tokens_long=5"), tmp_path, domain="comparison", n=4)
    summary = read_strict_json(tmp_path / "explain" / "summary.json")
    # The long styles' budget changed: those are generated again, the short styles and confidences are reused.
    assert counts.scoring == 0 and counts.generate > 0 and set(counts.budgets) == {5}
    n_long = sum(1 for s in expl.STYLE_NAMES if expl.max_new_tokens_for(s, 5, 4) == 5)
    assert summary["from_cache"]["explanations"] == (10 - n_long) * 4
    # Another model (the random model's seed, a different name) or another batch size share no key.
    base = model_identity(_explain_config())
    assert model_identity(_explain_config("seed=1")) != base
    assert model_identity(_explain_config("model.name=smollm2-135m-instruct-gguf")) != base
    cache = expl.ResultCache(None, base)
    assert cache.key("explanation", 4, 4, [1, 2]) != cache.key("explanation", 4, 8, [1, 2])
    assert cache.key("explanation", 4, 4, [1, 2]) != expl.ResultCache(None, base + " ").key("explanation", 4, 4, [1, 2])


def test_result_cache_rejects_a_corrupt_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "kind": "explanation", "text": "x"}\n{"key": 3}\n')
    with pytest.raises(ValueError, match=r"cache.jsonl:2: a bad explain-cache line \(not an object with a string .key.\)"):
        expl.ResultCache(path)
