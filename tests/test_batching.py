"""Encoding (loss masks under three chat templates, decision tokens) and packed / bucketed, mixed, sharded,
resumable batches."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
from tokenizers import Regex, pre_tokenizers

from metacog_jax.data import procedural, prompts
from metacog_jax.data.batching import (BatchBuilder, Encoded, LossWeights, batch_stats, decision_offset,
                                       default_buckets, encode_pairwise, encode_replay, encode_replays,
                                       encode_single, encode_targets, scale_decision_tokens)
from metacog_jax.models.tokenizer import _LLAMA3_SPLIT

# A Qwen2-style ChatML template that inserts the default system prompt, and a Llama-3-style template; both
# written here so the tests need no hub access.
QWEN2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3_TEMPLATE = (
    "{{- '<|begin_of_text|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def tokenizers(smol_tokenizer):
    qwen = copy.deepcopy(smol_tokenizer)
    qwen.chat_template = QWEN2_TEMPLATE
    llama = copy.deepcopy(smol_tokenizer)
    llama.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    llama.chat_template = LLAMA3_TEMPLATE
    # Llama 3's pre-tokenizer keeps "\n\n" together before a word (GPT-2's splits it), so "Q1" after the
    # assistant header tokenizes on its own as with the real Llama 3 tokenizer.
    llama.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return {"smollm2": smol_tokenizer, "qwen2": qwen, "llama3": llama}


def test_label_merging_with_the_prompt_fails_loudly(smol_tokenizer, questions):
    # The Llama 3 template with GPT-2's pre-tokenizer: "\n\nQ1" splits differently from "\n\n" + "Q1".
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = LLAMA3_TEMPLATE
    q1, q2 = list(questions.values())[:2]
    with pytest.raises(prompts.TemplateError, match="'Q1' does not tokenize on its own"):
        encode_pairwise(tok, q1, q2, pair_record(q1, q2))


@pytest.fixture(scope="module")
def questions():
    qs = procedural.generate("arithmetic", 6, seed=0, split="all") + procedural.generate("comparison", 4, seed=0,
                                                                                         split="all")
    return {q.id: q for q in qs}


def single_record(q, target=0.73, answer="42"):
    return {"question_id": q.id, "split": "train", "answer": answer if q.kind == "numeric" else "B",
            "target": target}


def pair_record(q1, q2, choice="Q2"):
    return {"q1": q1.id, "q2": q2.id, "split": "train", "choice": choice, "answers": ["42", None]}


def one_row(e: Encoded, weights=LossWeights()):
    return BatchBuilder([e] if e.task == "single" else [], [e] if e.task == "pairwise" else [], batch_size=1,
                        max_len=1024, mix=0.0 if e.task == "single" else 1.0, packing=False,
                        weights=weights).global_batch(0)


def masked_text(tok, batch):
    sel = batch["loss_weights"][0] > 0
    assert np.array_equal(batch["loss_mask"][0] > 0, sel)
    return tok.decode(batch["targets"][0][sel].tolist(), skip_special_tokens=False)


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "llama3"])
def test_loss_mask_is_exactly_the_completion(tokenizers, questions, name):
    tok = tokenizers[name]
    eot = prompts.end_of_turn(tok)
    assert eot == {"smollm2": "<|im_end|>\n", "qwen2": "<|im_end|>\n", "llama3": "<|eot_id|>"}[name]
    q = next(q for q in questions.values() if q.kind == "numeric")
    scale = prompts.confidence_scale("0-9")
    enc = encode_single(tok, q, single_record(q), scale)
    batch = one_row(enc)
    assert masked_text(tok, batch) == "The answer is 42 and my confidence score is 7" + eot
    # Nothing of the prompt is a target: the weighted span starts right after the assistant header.
    prompt_len = enc.roles.count(prompts.PROMPT)
    assert enc.roles[:prompt_len] == (prompts.PROMPT,) * prompt_len
    assert not batch["loss_weights"][0][:prompt_len - 1].any() and batch["loss_weights"][0][prompt_len - 1] > 0
    prompt_text = tok.decode(list(enc.ids[:prompt_len]), skip_special_tokens=False)
    assert prompt_text == prompts.single_prompt(tok, q, scale)
    if name == "qwen2":
        assert "You are Qwen" in prompt_text

    q1, q2 = list(questions.values())[:2]
    penc = encode_pairwise(tok, q1, q2, pair_record(q1, q2))
    pbatch = one_row(penc)
    assert masked_text(tok, pbatch) == "Q2\nQ1: The answer is 42\nQ2: The answer is unknown" + eot
    assert pbatch["task_ids"][0][pbatch["loss_weights"][0] > 0].tolist() == [2] * int(pbatch["loss_mask"].sum())


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "llama3"])
def test_decision_token_is_the_distinguishing_digit(tokenizers, questions, name):
    tok = tokenizers[name]
    q = next(q for q in questions.values() if q.kind == "multiple_choice")
    scale = prompts.confidence_scale("0-9")
    enc = encode_single(tok, q, single_record(q, target=0.31), scale)
    assert tok.decode([enc.ids[enc.decision_index]]) == "3"
    assert enc.roles[enc.decision_index] == prompts.CONFIDENCE
    batch = one_row(enc)
    (pos,) = np.nonzero(batch["decision_mask"][0])[0]
    assert pos == enc.decision_index - 1 and batch["targets"][0][pos] == enc.ids[enc.decision_index]
    assert batch["decision_value"][0][pos] == pytest.approx(0.31)
    ids, values = scale_decision_tokens(tok, scale)
    assert [tok.decode([i]) for i in ids] == [str(d) for d in range(10)] and values[3] == pytest.approx(0.35)
    # Labels that differ in several positions (0.00 .. 1.00) or in length (0 .. 100) have no decision token.
    for name_ in ("0-1", "0-100"):
        other = prompts.confidence_scale(name_)
        assert encode_single(tok, q, single_record(q), other).decision_index == -1
        assert scale_decision_tokens(tok, other) is None
    # Pairwise: the token where "Q1" and "Q2" differ; it is never in the (Brier) decision mask.
    q1, q2 = list(questions.values())[:2]
    penc = encode_pairwise(tok, q1, q2, pair_record(q1, q2, choice="Q1"))
    assert tok.decode([penc.ids[penc.decision_index]]) == "1" and penc.conf_value == 1.0
    assert not one_row(penc)["decision_mask"].any()


def test_decision_offset_rule():
    assert decision_offset([[5, 1], [5, 2], [5, 3]]) == 1
    assert decision_offset([[5, 1, 7], [5, 2, 8]]) == -1
    assert decision_offset([[5, 1], [5, 2, 2]]) == -1
    assert decision_offset([[9], [10]]) == 0


def test_role_and_task_weights(tokenizers, questions):
    tok = tokenizers["smollm2"]
    q = next(q for q in questions.values() if q.kind == "numeric")
    w = LossWeights(w_format=0.5, w_answer=2.0, w_confidence=3.0, w_single=0.25)
    enc = encode_single(tok, q, single_record(q), prompts.confidence_scale("0-9"))
    batch = one_row(enc, w)
    expected = {prompts.PROMPT: 0.0, prompts.FORMAT: 0.125, prompts.ANSWER: 0.5, prompts.CONFIDENCE: 0.75}
    got = batch["loss_weights"][0][:len(enc) - 1]
    assert got.tolist() == [expected[r] for r in enc.roles[1:]]
    assert batch["task_ids"][0][:len(enc) - 1].tolist() == [1] * (len(enc) - 1)
    assert batch["loss_weights"][0][len(enc) - 1:].sum() == 0  # no target past the example
    with pytest.raises(ValueError, match="w_answer"):
        LossWeights(w_answer=-1)


def test_encode_targets_checks_labels_once_and_filters_split(tokenizers, questions):
    qs = list(questions.values())
    single = [single_record(q, target=i / 10) for i, q in enumerate(qs)]
    single[0] = dict(single[0], split="test")
    pairs = [pair_record(qs[0], qs[1]), pair_record(qs[2], qs[3], "Q1")]
    enc_s, enc_p = encode_targets(tokenizers["smollm2"], questions, single, pairs, prompts.confidence_scale("0-9"))
    assert len(enc_s) == len(qs) - 1 and len(enc_p) == 2
    assert [e.key for e in enc_s] == [r["question_id"] for r in single[1:]]
    assert enc_s == [encode_single(tokenizers["smollm2"], questions[r["question_id"]], r,
                                   prompts.confidence_scale("0-9")) for r in single[1:]]
    with pytest.raises(KeyError, match="nope"):
        encode_targets(tokenizers["smollm2"], questions, [dict(single[1], question_id="nope")], [],
                       prompts.confidence_scale("0-9"))


# -- batches from synthetic examples ------------------------------------------------------------------------
def synthetic(n, task, seed, lo=5, hi=40):
    """Examples whose ids encode (task, example number, position) so rows can be traced back."""
    rng = random.Random(seed)
    out = []
    base = {"single": 1, "pairwise": 2, "replay": 3}[task]
    for i in range(n):
        length = rng.randint(lo, hi)
        prompt = rng.randint(2, length - 2)
        roles = (prompts.PROMPT,) * prompt + (prompts.ANSWER,) * (length - prompt - 2) + (
            prompts.CONFIDENCE, prompts.FORMAT)
        if task == "replay":  # the base model's completion: every token a replay target
            roles = (prompts.PROMPT,) * prompt + (prompts.REPLAY,) * (length - prompt)
        ids = tuple(base * 100_000 + i * 100 + t for t in range(length))
        out.append(Encoded(ids, roles, task, 0.1 * (i % 10), length - 2, f"{task}{i}"))
    return out


SINGLE = synthetic(37, "single", 0)
PAIRS = synthetic(23, "pairwise", 1, lo=30, hi=60)


def test_packing_keeps_examples_separate_and_positions_restart():
    b = BatchBuilder(SINGLE, PAIRS, batch_size=4, max_len=128, mix=0.5, seed=3, pack_window=16)
    by_first = {e.ids[0]: e for e in SINGLE + PAIRS}
    seen = 0
    for step in range(6):
        batch = b[step]
        assert all(batch[k].shape == (4, 128) for k in batch)
        for r in range(4):
            seg, tok = batch["segment_ids"][r], batch["tokens"][r]
            assert (np.diff(seg[seg > 0]) >= 0).all() and (seg[np.argmax(seg == 0):] == 0).all() or (seg > 0).all()
            for s in np.unique(seg[seg > 0]):
                idx = np.nonzero(seg == s)[0]
                e = by_first[int(tok[idx[0]])]
                assert tok[idx].tolist() == list(e.ids)
                assert batch["positions"][r][idx].tolist() == list(range(len(e)))
                assert batch["targets"][r][idx[:-1]].tolist() == list(e.ids[1:])
                assert batch["targets"][r][idx[-1]] == 0 and batch["loss_weights"][r][idx[-1]] == 0
                if e.task == "single":
                    assert batch["decision_mask"][r][idx[e.decision_index - 1]] == 1
                    assert batch["decision_value"][r][idx[e.decision_index - 1]] == np.float32(e.conf_value)
                seen += 1
            assert batch["loss_weights"][r][seg == 0].sum() == 0 and (batch["tokens"][r][seg == 0] == 0).all()
    stats = batch_stats([b[s] for s in range(6)])
    assert stats["examples"] == seen > 2 * 6 * 4  # several examples per row
    assert stats["padding_fraction"] < 0.25


def test_batch_is_a_pure_function_of_seed_and_step():
    kw = dict(batch_size=4, max_len=96, mix=0.4, seed=11, pack_window=16)
    a = BatchBuilder(SINGLE, PAIRS, **kw)
    in_order = [a[s] for s in range(12)]
    fresh = BatchBuilder(SINGLE, PAIRS, **kw)
    for s in (9, 3, 11, 0):  # random access on a new builder, no iteration state
        for k in in_order[s]:
            np.testing.assert_array_equal(fresh[s][k], in_order[s][k])
    other = BatchBuilder(SINGLE, PAIRS, **dict(kw, seed=12))
    assert not np.array_equal(other[0]["tokens"], in_order[0]["tokens"])
    np.testing.assert_array_equal(fresh.get(4)["targets"], in_order[4]["targets"])
    ds = a.dataset(num_steps=12, start_step=9)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[0]["tokens"], in_order[9]["tokens"])


@pytest.mark.parametrize("packing", [True, False])
def test_shards_partition_the_global_batch(packing):
    kw = dict(batch_size=6, max_len=96, mix=0.5, seed=2, packing=packing, pack_window=16)
    whole = BatchBuilder(SINGLE, PAIRS, **kw)
    shards = [BatchBuilder(SINGLE, PAIRS, shard_index=i, shard_count=3, **kw) for i in range(3)]
    assert shards[0].local_batch_size == 2
    for step in (0, 5):
        g = whole.global_batch(step)
        for k in g:
            np.testing.assert_array_equal(np.concatenate([s[step][k] for s in shards]), g[k])
    with pytest.raises(ValueError, match="divide"):
        BatchBuilder(SINGLE, PAIRS, batch_size=5, max_len=96, shard_count=2, shard_index=0)


def test_mixing_ratio_and_epoch_coverage():
    b = BatchBuilder(SINGLE, PAIRS, batch_size=8, max_len=64, mix=0.25, packing=False, seed=0)
    for step in range(5):
        stats = batch_stats(b[step])
        assert (stats["single_examples"], stats["pairwise_examples"]) == (6, 2)
    # The first len(SINGLE) single draws of the stream are one full epoch: every example exactly once.
    singles = [b.stream_example(j).key for j in range(200) if b.stream_example(j).task == "single"]
    assert sorted(singles[:37]) == sorted(e.key for e in SINGLE)
    assert singles[37:74] != singles[:37]  # the next epoch is reshuffled
    packed = BatchBuilder(SINGLE, PAIRS, batch_size=4, max_len=128, mix=0.25, seed=0, pack_window=40)
    st = batch_stats([packed[s] for s in range(20)])
    assert abs(st["pairwise_examples"] / st["examples"] - 0.25) < 0.05
    only_single = BatchBuilder(SINGLE, [], batch_size=2, max_len=64, mix=0.0, seed=0)
    assert batch_stats(only_single[0])["pairwise_examples"] == 0
    with pytest.raises(ValueError, match="needs pairwise"):
        BatchBuilder(SINGLE, [], batch_size=2, max_len=64, mix=0.5)


REPLAY = synthetic(29, "replay", 2)


@pytest.mark.parametrize("mix", [0.0, 0.4, 1.0])
def test_replay_is_interleaved_without_moving_the_task_stream(mix):
    # Every 4th position (floor((j+1)/4) > floor(j/4)) is a replay example; the other positions, in order,
    # are exactly the stream of a builder without replay, so replay changes nothing else about training.
    kw = dict(batch_size=4, max_len=64, mix=mix, packing=False, seed=5)
    plain = BatchBuilder(SINGLE if mix < 1 else [], PAIRS if mix > 0 else [], **kw)
    mixed = BatchBuilder(SINGLE if mix < 1 else [], PAIRS if mix > 0 else [], replay=REPLAY, replay_share=0.25, **kw)
    stream = [mixed.stream_example(j) for j in range(160)]
    assert [j for j, e in enumerate(stream) if e.task == "replay"] == list(range(3, 160, 4))
    assert [e.key for e in stream if e.task != "replay"] == [plain.stream_example(j).key for j in range(120)]
    replays = [e.key for e in stream if e.task == "replay"]
    assert sorted(replays[:29]) == sorted(e.key for e in REPLAY)  # an epoch of replays: each once
    assert mixed.stats["replay"] == 29 and mixed.stats["replay_share"] == 0.25
    # With share 0 the stream is the plain one even when replay examples are passed.
    zero = BatchBuilder(SINGLE if mix < 1 else [], PAIRS if mix > 0 else [], replay=REPLAY, **kw)
    for step in (0, 7):
        for k, v in plain[step].items():
            np.testing.assert_array_equal(zero[step][k], v)


def test_replay_rows_weigh_the_completion_by_the_replay_weight():
    w = LossWeights(w_answer=0.0, w_format=0.0, w_replay=0.5)  # role weights do not touch replay tokens
    b = BatchBuilder(SINGLE, [], batch_size=8, max_len=64, mix=0.0, packing=False, seed=0, weights=w,
                     replay=REPLAY, replay_share=0.5)
    batch = b[0]
    assert batch_stats(batch)["replay_examples"] == 4 and batch_stats(batch)["single_examples"] == 4
    for r in range(8):
        e = b.stream_example(r)
        n = len(e)
        if e.task != "replay":
            continue
        assert batch["task_ids"][r][:n - 1].tolist() == [3] * (n - 1)
        expected = [0.0 if role == prompts.PROMPT else 0.5 for role in e.roles[1:]]
        assert batch["loss_weights"][r][:n - 1].tolist() == expected
        assert batch["decision_mask"][r].sum() == 0
    with pytest.raises(ValueError, match="needs replay examples"):
        BatchBuilder(SINGLE, [], batch_size=2, max_len=64, mix=0.0, replay_share=0.2)
    with pytest.raises(ValueError, match=r"replay_share .* \[0, 1\)"):
        BatchBuilder(SINGLE, [], batch_size=2, max_len=64, mix=0.0, replay=REPLAY, replay_share=1.0)


def test_replay_examples_are_the_answer_prompt_and_the_greedy_completion(tokenizers, questions):
    tok = tokenizers["smollm2"]
    q = next(q for q in questions.values() if q.kind == "numeric")
    rec = {"id": q.id, "split": "train", "greedy": {"text": "The answer is 12.", "answer": "12", "correct": False}}
    enc = encode_replay(tok, q, rec, instruction="followed")
    n_prompt = enc.roles.count(prompts.PROMPT)
    assert tok.decode(list(enc.ids[:n_prompt])) == prompts.answer_prompt(tok, q, "followed")
    assert tok.decode(list(enc.ids[n_prompt:])) == "The answer is 12."
    assert set(enc.roles[n_prompt:]) == {prompts.REPLAY} and enc.task == "replay" and enc.decision_index == -1
    single = encode_single(tok, q, single_record(q), prompts.confidence_scale("0-9"))
    batch = BatchBuilder([single], [], batch_size=2, max_len=1024, mix=0.0, packing=False, replay=[enc],
                         replay_share=0.5).global_batch(0)  # row 0 the single example, row 1 the replay
    sel = batch["loss_weights"][1] > 0
    assert tok.decode(batch["targets"][1][sel].tolist()) == "The answer is 12."
    # Only records of the split, of a listed question, with a greedy text become replay examples.
    other = next(o for o in questions.values() if o.id != q.id)
    recs = [rec, dict(rec, id=other.id, split="test"), {"id": "absent", "split": "train", "greedy": rec["greedy"]},
            dict(rec, id=other.id, greedy={"text": "  ", "answer": None, "correct": False})]
    assert [e.key for e in encode_replays(tok, questions, recs, instruction="followed")] == [q.id]
    with pytest.raises(ValueError, match="paired with question"):
        encode_replay(tok, other, rec)


def test_bucketed_padding_picks_smallest_fitting_bucket():
    assert default_buckets(512) == (64, 128, 256, 512) and default_buckets(300) == (64, 128, 256, 300)
    b = BatchBuilder(SINGLE, PAIRS, batch_size=4, max_len=100, mix=0.5, packing=False, buckets=(32, 48, 64, 100))
    for step in range(4):
        longest = max(len(b.stream_example(step * 4 + r)) for r in range(4))
        T = b[step]["tokens"].shape[1]
        assert T == min(x for x in (32, 48, 64, 100) if x >= longest)
        assert (b[step]["segment_ids"].max(axis=1) == 1).all()  # one example per row


def test_too_long_examples_raise_or_are_counted():
    with pytest.raises(ValueError, match="longer than max_len=45"):
        BatchBuilder(SINGLE, PAIRS, batch_size=2, max_len=45)
    b = BatchBuilder(SINGLE, PAIRS, batch_size=2, max_len=45, skip_too_long=True)
    n_long_pairs = sum(len(e) > 45 for e in PAIRS)
    assert b.stats["too_long"] == {"single": 0, "pairwise": n_long_pairs, "replay": 0} and n_long_pairs > 0
    assert b.stats["pairwise"] == len(PAIRS) - n_long_pairs
    assert batch_stats(b[0], too_long=n_long_pairs)["too_long"] == n_long_pairs
    assert b.longest_example == max(len(e) for e in SINGLE + PAIRS if len(e) <= 45)  # the kept ones only


def test_epoch_shuffle_is_a_fresh_permutation_per_epoch_and_stable():
    from metacog_jax.data.batching import EpochShuffle

    s = EpochShuffle(50, seed=7)
    epochs = [s.take(np.arange(e * 50, (e + 1) * 50)) for e in range(3)]
    assert all(sorted(e.tolist()) == list(range(50)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    again = EpochShuffle(50, seed=7, cache=1)
    ks = np.array([149, 3, 77, 0, 120])
    np.testing.assert_array_equal(again.take(ks), s.take(ks))
    assert [s[int(k)] for k in ks] == s.take(ks).tolist()
    assert not np.array_equal(EpochShuffle(50, seed=8).permutation(0), s.permutation(0))
