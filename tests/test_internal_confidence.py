"""Internal confidence of paper 2: option-letter probabilities and P(True), against plain forward passes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metacog_jax.data.records import OPTION_LETTERS, Question
from metacog_jax.perception import internal_confidence as ic


def _mc(n_options: int, i: int = 0) -> Question:
    return Question(id=f"t/mc{n_options}_{i}", domain="t", split="test",
                    question=f"Which option is number {i} of {n_options}?",
                    kind="multiple_choice", options=tuple(f"option text {k} {i}" for k in range(n_options)),
                    answers=("A",))


_REF_LENGTH = 512  # right-padded length of the reference passes: one compile for every sequence


def _sequence_logprob(model, prefix: list[int], continuation: list[int]) -> float:
    """log P(continuation | prefix) from one plain causal forward pass over prefix + continuation
    (right padding cannot change earlier positions under a causal mask)."""
    from flax import nnx

    seq = prefix + continuation
    assert len(seq) <= _REF_LENGTH and len(continuation) <= 4
    tokens = np.full((1, _REF_LENGTH), 2, np.int32)
    tokens[0, :len(seq)] = seq
    rows = np.clip(len(prefix) - 1 + np.arange(4), 0, _REF_LENGTH - 1).astype(np.int32)
    graphdef, state = nnx.split(model)
    logp = np.asarray(_plain_logprobs(graphdef, state, jnp.asarray(tokens), jnp.asarray(rows)), np.float64)
    return float(sum(logp[s, tok] for s, tok in enumerate(continuation)))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _plain_logprobs(graphdef, state, tokens, rows):
    """Full-vocabulary log-softmax [len(rows), V] at the given positions of one causal pass."""
    from flax import nnx

    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
    logits, _ = nnx.merge(graphdef, state)(tokens, positions)
    return jax.nn.log_softmax(logits[0, rows].astype(jnp.float32), axis=-1)


def _reference_option_probs(model, tokenizer, q: Question) -> np.ndarray:
    prefix = tokenizer.encode(ic.mc_prefix_text(tokenizer, q), add_special_tokens=False)
    lp = np.asarray([_sequence_logprob(model, prefix, tokenizer.encode(" " + letter, add_special_tokens=False))
                     for letter in OPTION_LETTERS[:len(q.options)]])
    w = np.exp(lp - lp.max())
    return w / w.sum()


def test_mc_confidence_matches_plain_forward_for_2_to_13_options(tiny_model, smol_tokenizer):
    # Mixed option counts in one call, sharing batches: each row renormalizes over its own options.
    questions = [_mc(2), _mc(4), _mc(10), _mc(13), _mc(4, 1)]
    out = ic.mc_confidence(tiny_model, smol_tokenizer, questions, batch_size=4)
    assert len(out) == len(questions)
    for q, r in zip(questions, out):
        probs = r["option_probs"]
        assert probs.shape == (len(q.options),)
        assert probs.sum() == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(probs, _reference_option_probs(tiny_model, smol_tokenizer, q), atol=2e-5)
        k = int(np.argmax(probs))
        assert r["answer"] == OPTION_LETTERS[k]
        assert r["confidence"] == pytest.approx(probs[k])
        assert 1.0 / len(q.options) - 1e-12 <= r["confidence"] <= 1.0
        assert 0.0 < r["option_mass"] <= 1.0


def test_mc_confidence_rejects_short_answer_questions(tiny_model, smol_tokenizer):
    q = Question(id="t/num", domain="t", split="test", question="2+2?", kind="numeric", answers=("4",))
    with pytest.raises(ValueError, match="t/num"):
        ic.mc_confidence(tiny_model, smol_tokenizer, [_mc(4), q])


def test_p_true_matches_plain_forward(tiny_model, smol_tokenizer):
    questions = [Question(id="t/num", domain="t", split="test", question="What is 17 + 25?", kind="numeric",
                          answers=("42",)),
                 Question(id="t/open", domain="t", split="test", question="Capital of France?", kind="open",
                          answers=("Paris",)),
                 _mc(4)]
    answers = ["42", "Lyon", "C"]
    got = ic.p_true(tiny_model, smol_tokenizer, questions, answers, batch_size=2)
    assert got.shape == (3,)
    for q, a, p in zip(questions, answers, got):
        prefix = smol_tokenizer.encode(ic.p_true_prefix_text(smol_tokenizer, q, a), add_special_tokens=False)
        lp_true = _sequence_logprob(tiny_model, prefix, smol_tokenizer.encode(" True", add_special_tokens=False))
        lp_false = _sequence_logprob(tiny_model, prefix, smol_tokenizer.encode(" False", add_special_tokens=False))
        ref = 1.0 / (1.0 + np.exp(lp_false - lp_true))
        assert p == pytest.approx(ref, abs=2e-5)
    # The proposed answer is part of the prompt, so it changes the readout.
    other = ic.p_true(tiny_model, smol_tokenizer, questions[:1], ["41"])
    assert other[0] != pytest.approx(got[0], abs=1e-9)
    with pytest.raises(ValueError, match="answers"):
        ic.p_true(tiny_model, smol_tokenizer, questions, answers[:2])
