"""Self-consistency sampling on a tiny random model: line format, resume, truncated and malformed files."""

from __future__ import annotations

import json

import pytest

from metacog_jax.data import procedural, records
from metacog_jax.data.records import Question
from metacog_jax.data.self_consistency import (SamplesError, default_questions_path, grade_samples,
                                               question_seed, read_samples, sample_questions)
from metacog_jax.sampling import Sampler

K, MAX_NEW = 3, 4


@pytest.fixture(scope="module")
def questions():
    return procedural.generate("arithmetic", 6, seed=0, split="all")


@pytest.fixture
def sampler(tiny_model, smol_tokenizer):
    return Sampler(tiny_model, smol_tokenizer, batch_size=2)


def run(sampler, questions, path, **kw):
    return sample_questions(sampler, questions, path, k=K, max_new_tokens=MAX_NEW, seed=3, progress=False,
                            model_name="tiny", **kw)


def test_writes_one_graded_line_per_question_then_resume_skips_all(sampler, questions, tmp_path):
    path = tmp_path / "samples" / "arithmetic.jsonl"
    summary = run(sampler, questions, path)
    lines = read_samples(path)
    assert [r["id"] for r in lines] == [q.id for q in questions]
    assert summary.n_sampled == 6 and summary.n_records == 6 and summary.tokens_generated > 0
    for r, q in zip(lines, questions):
        assert (r["domain"], r["split"], r["kind"], r["k"], r["model"]) == (q.domain, q.split, q.kind, K, "tiny")
        assert len(r["samples"]) == K and 0.0 <= r["consistency"] <= 1.0
        assert r["consistency"] == pytest.approx(r["modal_count"] / K)
        assert set(r["greedy"]) == {"text", "answer", "correct", "grader"}
        assert r["grading"] == {"mode": "rule", "open_rule": "containment"}
    # The questions used are written beside the samples so later stages can render prompts by id.
    saved = records.read_questions(default_questions_path(path))
    assert saved == list(questions)

    before = path.read_bytes()
    again = run(sampler, questions, path)
    assert again.n_sampled == 0 and again.n_resumed == 6
    assert path.read_bytes() == before


def test_truncated_last_line_resumes_to_identical_file(sampler, questions, tmp_path, caplog):
    full = tmp_path / "full.jsonl"
    run(sampler, questions, full)
    reference = full.read_bytes()
    # A run killed while writing question 5's line: 4 complete lines plus a fragment of the 5th.
    lines = reference.splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:4]) + lines[4][:25])
    with pytest.raises(SamplesError, match=r"killed.jsonl:5: truncated"):
        read_samples(killed)
    with caplog.at_level("WARNING"):
        summary = run(sampler, questions, killed)
    assert "truncated last line" in caplog.text
    assert summary.n_resumed == 4 and summary.n_sampled == 2
    assert killed.read_bytes() == reference


def test_malformed_middle_line_names_file_and_line(sampler, questions, tmp_path):
    path = tmp_path / "bad.jsonl"
    run(sampler, questions[:3], path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{not json\n" + lines[2])
    with pytest.raises(SamplesError, match=r"bad.jsonl:2: invalid JSON"):
        run(sampler, questions, path)
    record = json.loads(lines[1])
    del record["consistency"]
    path.write_text(lines[0] + json.dumps(record) + "\n" + lines[2])
    with pytest.raises(SamplesError, match=r"bad.jsonl:2: missing field 'consistency'"):
        read_samples(path)


def test_resume_with_other_settings_fails(sampler, questions, tmp_path):
    path = tmp_path / "s.jsonl"
    run(sampler, questions[:2], path)
    with pytest.raises(SamplesError, match="temperature"):
        sample_questions(sampler, questions, path, k=K, temperature=0.5, max_new_tokens=MAX_NEW, seed=3,
                         progress=False)
    with pytest.raises(SamplesError, match="model='tiny'"):
        sample_questions(sampler, questions, path, k=K, max_new_tokens=MAX_NEW, seed=3, progress=False,
                         model_name="other")


def test_question_seed_is_stable_and_distinct():
    # Fixed value: SHA-256 based, so it never changes across runs or Python hash seeds.
    assert question_seed(0, "gsm8k/train/1") == question_seed(0, "gsm8k/train/1")
    assert question_seed(0, "a") != question_seed(1, "a") != question_seed(0, "b")
    assert 0 <= question_seed(7, "x") < 2**31


def test_grade_samples_counts_unparseable_in_denominator():
    q = Question(id="t/1", domain="t", split="train", question="2+2?", kind="numeric", answers=("4",))
    out = grade_samples(q, ["The answer is 4", "no idea", "4.0", "The answer is 5"], "The answer is 4")
    assert [s["answer"] for s in out["samples"]] == ["4", None, "4", "5"]
    assert (out["modal_answer"], out["modal_count"], out["consistency"], out["modal_correct"]) == ("4", 2, 0.5, True)
    assert out["greedy"] == {"text": "The answer is 4", "answer": "4", "correct": True, "grader": "rule:numeric"}
    none = grade_samples(q, ["no", "idea"], None)
    assert (none["modal_answer"], none["consistency"], none["modal_correct"], none["greedy"]) == (None, 0.0, False,
                                                                                               None)


def test_samples_feed_targets_and_batches(sampler, questions, tmp_path):
    """sample -> targets -> encoded examples -> a batch, through the workdir files."""
    from metacog_jax.data import prompts
    from metacog_jax.data.batching import BatchBuilder, encode_targets
    from metacog_jax.data.targets import build_targets, load_sampled

    run(sampler, questions, tmp_path / "samples" / "arithmetic.jsonl")
    samples, by_id = load_sampled(tmp_path)
    assert len(samples) == 6 and set(by_id) == {q.id for q in questions}
    single, pairs, summary = build_targets(samples, by_id, mode="consistency", balance=False)
    splits = summary["splits"]
    assert splits["train"]["samples"] + splits["test"]["samples"] == 6
    assert len(single) == 6 and splits["train"]["pairwise"] + splits["train"]["unpaired"] > 0
    enc_single, _ = encode_targets(sampler.tokenizer, by_id, single, pairs, prompts.confidence_scale("0-9"),
                                   split=None)
    batch = BatchBuilder(enc_single, [], batch_size=2, max_len=512, mix=0.0)[0]
    assert batch["tokens"].shape == (2, 512) and batch["decision_mask"].sum() >= 2


def test_a_judge_grades_in_the_same_batches_whatever_the_process_count(tmp_path, monkeypatch):
    """With several processes a round holds one chunk per process; the judge must still be asked chunk by
    chunk, as in one process, so its batches (and padded lengths) do not depend on the process count."""
    import jax

    from metacog_jax import multihost
    from metacog_jax.data import graders
    from metacog_jax.data.judge import LLMJudge
    from metacog_jax.data.self_consistency import sample_questions
    from metacog_jax.sampling import Completion, Generation

    class Tok:
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kw):
            return "".join(m["content"] for m in messages)

        def encode(self, text, add_special_tokens=False):
            return [b % 200 + 1 for b in text.encode()]

    class Answers:  # every process holds the round's completions, as after merge_shares
        batch_size, tokenizer = 4, Tok()

        def generate(self, prompts, params, key, seeds=None, sort_window=None, progress=False):
            return Generation([[Completion(f"answer {(s + j) % 3}", [1], [0.0], "stop")
                                for j in range(params.num_samples)] for s in seeds])

    class Judge:
        tokenizer = Tok()

        def __init__(self):
            self.batches = []

        def encode_chat(self, messages):
            return Tok().encode(messages[0]["content"])

        def generate(self, prompts, params, key, **kw):
            self.batches.append(len(prompts))
            return Generation([[Completion("Yes" if len(p) % 2 else "No", [1], [0.0], "stop")] for p in prompts])

    questions = [Question(id=f"q{i}", domain="d", split="test", question=f"What is thing {i}?", kind="open",
                          answers=(f"answer {i % 3}",)) for i in range(16)]

    def run(count):
        judge_sampler, out = Judge(), tmp_path / f"p{count}"
        judge = LLMJudge("j", judge_sampler, cache_path=out / "judge_cache.jsonl", chunk_size=8)
        grader = graders.Grader(graders.GradingSettings(mode="judge", judge="j"), judge)
        monkeypatch.setattr(jax, "process_count", lambda: count)  # rounds of `count` chunks ...
        monkeypatch.setattr(multihost, "divided", lambda: False)  # ... run as process 0 alone
        sample_questions(Answers(), questions, out / "samples" / "d.jsonl", k=3, grader=grader, progress=False)
        return judge_sampler.batches, (out / "samples" / "d.jsonl").read_bytes()

    one, two = run(1), run(2)
    assert one[0] == [8, 4] * 4 and two == one
