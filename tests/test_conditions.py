"""The three training conditions (S = single, C = pairwise, C+S = multitask) learn on the tiny model.

A fixed target set is built once: procedural arithmetic questions with hand-made graded samples whose
consistency runs over 0..K (a random model's own samples are all unparseable, which gives no pairs),
turned into single and pairwise targets by the real targets stage. Each condition then trains 30 LoRA
steps through ``pipeline.stage_train`` with a learning rate high enough for the loss to move, and the
test reads ``<run>/train/metrics.jsonl``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"
K = 5  # samples per hand-made question
STEPS = 30

# task -> (condition name, per-task losses that must be logged non-zero, those that must stay 0)
CONDITIONS = {
    "single": ("S", ("loss_single",), ("loss_pairwise",)),
    "pairwise": ("C", ("loss_pairwise",), ("loss_single",)),
    "multitask": ("C+S", ("loss_single", "loss_pairwise"), ()),
}


def condition_config(task: str):
    """The tiny config for one condition: 30 steps, LoRA rank 8, lr 3e-3 after a 3-step warm-up."""
    from metacog_jax.config_utils import load_config

    return load_config(f"{TINY}:task={task},steps={STEPS},lora_rank=8,ood=",
                       ["train.lr=3e-3", "train.warmup_steps=3", f"train.checkpoint_every={STEPS}",
                        # a packed row holds ~40 loss positions: the LM head need not run on 160
                        "train.loss_positions=64"])


def _sample_line(question, agree: int, correct: bool) -> dict:
    """One samples-file line: `agree` of the K texts give the same answer (gold if `correct`), the rest
    give none, so consistency = agree / K."""
    from metacog_jax.data.self_consistency import grade_samples

    answer = question.answers[0] if correct else str(int(question.answers[0]) + 1)
    texts = [f"The answer is {answer}."] * agree + ["I do not know."] * (K - agree)
    return {"id": question.id, "domain": question.domain, "split": question.split, "kind": question.kind,
            **grade_samples(question, texts, greedy_text=texts[0]),
            "k": K, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "model": "random"}


@pytest.fixture(scope="module")
def data_workdir(tmp_path_factory) -> Path:
    """samples/, questions/ and targets/ for 24 train + 4 test arithmetic questions."""
    from metacog_jax import pipeline
    from metacog_jax.data import procedural, records

    data = tmp_path_factory.mktemp("condition_data")
    questions = (procedural.generate("arithmetic", 24, seed=0, split="train")
                 + procedural.generate("arithmetic", 4, seed=0, split="test"))
    # consistency 0, 1/K, ..., 1 in turn; the agreed answer is wrong for every third question
    lines = [_sample_line(q, i % (K + 1), correct=i % 3 != 0) for i, q in enumerate(questions)]
    assert {l["consistency"] for l in lines} == {i / K for i in range(K + 1)}  # the grader read our texts
    assert {l["modal_correct"] for l in lines} == {True, False}
    (data / "samples").mkdir()
    with open(data / "samples" / "arithmetic.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(l) + "\n" for l in lines)
    records.write_questions(data / "questions" / "arithmetic.jsonl", questions)
    pipeline.stage_targets(condition_config("multitask"), data)
    single = [json.loads(l) for l in open(data / "targets" / "single.jsonl")]
    pairs = [json.loads(l) for l in open(data / "targets" / "pairwise.jsonl")]
    assert sum(r["split"] == "train" for r in single) >= 10
    assert sum(r["split"] == "train" for r in pairs) >= 10
    return data


def _mean(xs) -> float:
    return sum(xs) / len(xs)


@pytest.mark.parametrize("task", sorted(CONDITIONS))
def test_condition_loss_falls(task, data_workdir, tmp_path):
    from metacog_jax import pipeline

    name, logged, absent = CONDITIONS[task]
    summary = pipeline.stage_train(condition_config(task), tmp_path, data_workdir)
    assert summary["end_step"] == STEPS and not summary["preempted"], summary
    assert summary["trainable_params"] < 0.1 * summary["total_params"]  # LoRA adapters only
    # Attention reaches back as far as the longest packed example (train.attention_window=-1).
    assert 0 < summary["attention_window"] == summary["batch_stats"]["max_len_seen"], summary

    rows = [json.loads(l) for l in open(tmp_path / "train" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("loss", "loss_single", "loss_pairwise", "grad_norm")), r
    loss = [r["loss"] for r in rows]
    first, last = _mean(loss[:5]), _mean(loss[-5:])
    # A 2-layer random model starts near ln(49152) = 10.8; 30 steps at lr 3e-3 take it down by ~1 nat.
    assert last < first - 0.3, f"{name}: loss {first:.3f} (first 5 steps) -> {last:.3f} (last 5 steps)"

    for key in logged:
        values = [r[key] for r in rows]
        present = [v for v in values if v > 0]
        # S and C batches hold only their task; a C+S batch of 4 packed rows may now and then miss one.
        assert len(present) >= (STEPS if len(logged) == 1 else 0.8 * STEPS), f"{name}: {key} {values}"
        # Each task's own loss falls, not only the total.
        assert _mean(present[-5:]) < _mean(present[:5]) - 0.3, f"{name}: {key} {values}"
    for key in absent:
        assert all(r[key] == 0.0 for r in rows), f"{name}: {key} should be 0 (task not trained)"
    assert (tmp_path / "checkpoints" / str(STEPS)).is_dir()


def test_replay_examples_join_the_batches(data_workdir):
    """train.replay > 0: the base model's greedy answer-prompt completions of the training questions join the
    stream at that share (task id 3), logged as loss_replay; 0 leaves them out; outside [0, 1) is an error."""
    from metacog_jax import pipeline
    from metacog_jax.data import prompts
    from metacog_jax.experiment_config import validate
    from metacog_jax.models.build import tokenizer_for_config
    from metacog_jax.train import losses

    config = condition_config("single")
    tokenizer = tokenizer_for_config(config)
    plain, _ = pipeline.make_batches(config, data_workdir, tokenizer)
    assert plain.stats["replay"] == 0
    config.train.replay = 0.25
    builder, _ = pipeline.make_batches(config, data_workdir, tokenizer)
    assert builder.stats["replay"] == 24 and builder.stats["replay_share"] == 0.25  # every train question
    e = next(builder.stream_example(j) for j in range(8) if builder.stream_example(j).task == "replay")
    n = e.roles.count(prompts.PROMPT)
    greedy = {l["id"]: l["greedy"]["text"] for l in map(json.loads, open(data_workdir / "samples" / "arithmetic.jsonl"))}
    assert tokenizer.decode(list(e.ids[n:])) == greedy[e.key]
    assert 3 in builder[0]["task_ids"] and losses.TASK_NAMES[3] == "replay"
    config.train.replay = 1.0
    with pytest.raises(ValueError, match=r"train\.replay=1\.0 .* must be in \[0, 1\)"):
        validate(config)
