"""Batched KV-cache sampling on a tiny random model with the real SmolLM2 tokenizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metacog_jax import sampling
from metacog_jax.sampling import Sampler, SamplingParams, filter_logits

PROMPTS = [[5, 17, 300, 4000, 25], [9, 8, 7, 6, 5, 4, 3, 1000, 20000, 33, 44, 55, 66, 77, 88, 99, 111, 222], [42]]


@pytest.fixture
def sampler(tiny_model, smol_tokenizer):
    return Sampler(tiny_model, smol_tokenizer, batch_size=4)


REFERENCE_LENGTH = 32  # every prompt + its continuation fits


def slow_greedy(model, prompt, n, stop_ids):
    """Reference: a full forward over the growing sequence, no cache. The sequence is right-padded to
    REFERENCE_LENGTH so that one compiled forward serves every step (causal attention: the padding after
    the last token changes nothing before it)."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    assert len(prompt) + n <= REFERENCE_LENGTH

    @jax.jit
    def last_logits(state, tokens, length):
        seg = (jnp.arange(REFERENCE_LENGTH) < length).astype(jnp.int32)[None]
        logits, _ = nnx.merge(graphdef, state)(tokens, jnp.arange(REFERENCE_LENGTH)[None], segment_ids=seg)
        return logits[0, length - 1]

    out = list(prompt)
    for _ in range(n):
        padded = jnp.asarray([out + [0] * (REFERENCE_LENGTH - len(out))], jnp.int32)
        tok = int(jnp.argmax(last_logits(state, padded, len(out))))
        if tok in stop_ids:
            break
        out.append(tok)
    return out[len(prompt):]


def test_temperature_zero_equals_uncached_greedy(sampler, tiny_model):
    gen = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=0.0), jax.random.key(0))
    for p, row in zip(PROMPTS, gen.completions):
        assert row[0].token_ids == slow_greedy(tiny_model, p, 12, sampler.stop_ids)


def test_same_key_same_samples_and_other_key_differs(sampler):
    params = SamplingParams(max_new_tokens=10, temperature=1.0, num_samples=3)
    a = sampler.generate(PROMPTS, params, jax.random.key(1))
    b = sampler.generate(PROMPTS, params, jax.random.key(1))
    c = sampler.generate(PROMPTS, params, jax.random.key(2))
    ids = lambda g: [[s.token_ids for s in row] for row in g.completions]
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    # K samples of one prompt differ from each other (they share a prefill, not randomness).
    assert len({tuple(t) for t in ids(a)[0]}) > 1


def test_mixed_length_batch_equals_each_prompt_alone(sampler):
    params = SamplingParams(max_new_tokens=8, temperature=0.8, num_samples=2)
    key = jax.random.key(3)
    batch = sampler.generate(PROMPTS, params, key, seeds=[11, 12, 13])
    for p, seed, row in zip(PROMPTS, [11, 12, 13], batch.completions):
        alone = sampler.generate([p], params, key, seeds=[seed]).completions[0]
        assert [s.token_ids for s in alone] == [s.token_ids for s in row]
        np.testing.assert_allclose([s.logprobs for s in alone], [s.logprobs for s in row], atol=1e-4)


def test_logprobs_are_model_logprobs(sampler, tiny_model):
    gen = sampler.generate(PROMPTS[:1], SamplingParams(max_new_tokens=5, temperature=0.0), jax.random.key(0))
    c = gen.completions[0][0]
    seq = PROMPTS[0] + c.token_ids
    logits, _ = tiny_model(jnp.asarray([seq]), jnp.arange(len(seq))[None])
    logp = jax.nn.log_softmax(logits[0], axis=-1)
    expected = [float(logp[len(PROMPTS[0]) - 1 + i, t]) for i, t in enumerate(c.token_ids)]
    np.testing.assert_allclose(c.logprobs, expected, atol=1e-4)


def test_stop_strings_cut_text_and_tokens(sampler):
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    full = sampler.generate(PROMPTS[:1], greedy, jax.random.key(0)).completions[0][0]
    assert len(full.text) > 6
    stop = full.text[4:7]
    cut = sampler.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16, temperature=0.0, stop_strings=(stop,)),
                           jax.random.key(0)).completions[0][0]
    assert cut.finish_reason == "stop_string"
    assert cut.text == full.text[:full.text.find(stop)]
    assert stop not in cut.text
    assert full.token_ids[:len(cut.token_ids)] == cut.token_ids
    # the kept tokens are the shortest prefix that reaches the stop string
    dec = sampler.tokenizer.decode
    assert stop in dec(cut.token_ids) and stop not in dec(cut.token_ids[:-1])


def test_top_k_one_and_tiny_top_p_are_greedy(sampler):
    greedy = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0), jax.random.key(0))
    for params in (SamplingParams(max_new_tokens=6, temperature=1.0, top_k=1),
                   SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1e-6)):
        got = sampler.generate(PROMPTS, params, jax.random.key(5))
        assert got.texts == greedy.texts


def test_filter_logits():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    neg = jnp.finfo(jnp.float32).min
    k2 = filter_logits(logits, top_k=2, top_p=1.0)
    assert bool(jnp.all(k2[0, 2:] == neg)) and bool(jnp.all(k2[0, :2] > neg))
    p = filter_logits(logits, top_k=0, top_p=0.7)  # 0.5 < 0.7 so the 0.3 token is needed too
    assert bool(jnp.all(p[0, :2] > neg)) and bool(jnp.all(p[0, 2:] == neg))


def test_batches_in_one_bucket_compile_once(sampler):
    sampling._generate.clear_cache()
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    for n in (1, 2, 3, 4, 7):  # 7 prompts = two calls of 4 rows
        sampler.generate([[1, 2, 3]] * n, params, jax.random.key(0))
    assert sampling._generate._cache_size() == 1


def test_bad_params_fail_clearly():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


def test_greedy_first_row_is_the_greedy_answer(sampler):
    greedy = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0), jax.random.key(0))
    mixed = sampler.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=1.0, num_samples=3,
                                                     greedy_first=True), jax.random.key(4))
    assert [row[0].token_ids for row in mixed.completions] == [row[0].token_ids for row in greedy.completions]
    assert any(row[1].token_ids != row[0].token_ids for row in mixed.completions)


def test_inverse_cdf_sampling_matches_softmax():
    probs = np.array([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = jnp.log(jnp.asarray(np.tile(probs, (20000, 1)), jnp.float32))
    keys = jax.random.split(jax.random.key(0), 20000)
    draws = np.asarray(sampling.sample_inverse_cdf(logits, keys))
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, probs, atol=0.012)  # ~4 standard errors at n=20000
    assert freq[4] == 0.0  # a zero-probability token is never drawn


def test_two_level_sampling_across_blocks():
    """Weights spread over several CDF blocks (and a short last block): frequencies match, zeros never drawn."""
    v = 3 * sampling.CDF_BLOCK + 17
    probs = np.zeros(v)
    probs[[0, 255, 256, 700, v - 1]] = [0.1, 0.3, 0.2, 0.15, 0.25]
    weights = jnp.asarray(np.tile(probs * 7.0, (20000, 1)), jnp.float32)  # unnormalized on purpose
    draws = np.asarray(sampling.sample_from_weights(weights, jax.random.split(jax.random.key(1), 20000)))
    freq = np.bincount(draws, minlength=v) / len(draws)
    np.testing.assert_allclose(freq, probs, atol=0.012)
    assert set(np.unique(draws)) <= {0, 255, 256, 700, v - 1}


def test_length_bucket_ladders():
    from metacog_jax.sampling import length_bucket

    half = sorted({length_bucket(n) for n in range(1, 300)})
    assert half == [16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    quarter = sorted({length_bucket(n, per_octave=4) for n in range(1, 300)})
    assert quarter == [16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
    for n in range(1, 2000):
        for per, frac in ((2, 1 / 3), (4, 1 / 5)):
            b = length_bucket(n, minimum=1, per_octave=per)
            assert b >= n and (b - n) / b <= frac + 1e-9, (n, per, b)
