"""One-pass trie scoring of confidence labels vs a slow per-label reference, on a tiny random model."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metacog_jax.data import procedural, prompts
from metacog_jax.data.pairs import CHOICE_LABELS
from metacog_jax.evaluation import scoring
from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]


@functools.partial(jax.jit, static_argnames=("graphdef", "width"))
def _causal_label_logprobs(graphdef, state, tokens, first, width):
    """Plain causal forward (the decoder's default mask) over tokens [R, T]; log-probs [R, W, V] at the W
    positions from `first` on (those predicting the label tokens)."""
    model = nnx.merge(graphdef, state)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = model(tokens, positions, return_hidden=True)
    return jax.nn.log_softmax(model.logits(jax.lax.dynamic_slice_in_dim(hidden, first, width, 1)))


def reference_distribution(model, prefix, label_seqs):
    """Slow reference: for each label, a plain causal forward over prefix + label tokens, summing the
    label tokens' log-probs; then renormalize over the labels. The labels run as one right-padded batch
    (padding after a label cannot change the positions before it under the causal mask); the padded
    length is a multiple of 64 so the reference compiles rarely."""
    p, width = len(prefix), max(len(s) for s in label_seqs)
    length = 64 * -(-(p + width) // 64)
    tokens = np.zeros((len(label_seqs), length), np.int32)
    for i, seq in enumerate(label_seqs):
        tokens[i, :p] = prefix
        tokens[i, p:p + len(seq)] = seq
    graphdef, state = nnx.split(model)
    logp = np.asarray(_causal_label_logprobs(graphdef, state, jnp.asarray(tokens), p - 1, width=width))
    logps = np.asarray([sum(float(logp[i, s, t]) for s, t in enumerate(seq)) for i, seq in enumerate(label_seqs)])
    w = np.exp(logps - logps.max())
    return w / w.sum()


@pytest.fixture(scope="module")
def questions():
    return procedural.generate("arithmetic", 2, seed=3, split="all") + procedural.generate(
        "comparison", 1, seed=3, split="all")


def reference_label_seqs(tokenizer, scale_name):
    """Label token sequences computed independently: ' ' + label, plus the end-of-turn token when some
    label is a proper prefix of another (SmolLM2 splits digits: ' 1' is a prefix of ' 10')."""
    scale = prompts.confidence_scale(scale_name)
    seqs = [tokenizer.encode(" " + l, add_special_tokens=False) for l in scale.labels]
    ambiguous = any(tuple(a) != tuple(b) and b[:len(a)] == a for a in seqs for b in seqs)
    if ambiguous:
        eot = tokenizer.encode(prompts.end_of_turn(tokenizer), add_special_tokens=False)[0]
        seqs = [s + [eot] for s in seqs]
    return seqs, ambiguous


@pytest.mark.parametrize("scale_name, multi_token, ambiguous", [
    ("0-1", True, False), ("0-100", True, True), ("0-10", True, True)])
def test_single_distribution_matches_slow_reference(tiny_model, smol_tokenizer, questions, scale_name,
                                                    multi_token, ambiguous):
    scale = prompts.confidence_scale(scale_name)
    answers = ["17", None, "B"]
    scored = scoring.score_single(tiny_model, smol_tokenizer, questions, answers, scale, batch_size=4)
    seqs, is_ambiguous = reference_label_seqs(smol_tokenizer, scale_name)
    assert is_ambiguous == ambiguous
    assert (max(len(s) for s in seqs) > 1) == multi_token
    if scale_name == "0-1":
        assert smol_tokenizer.convert_ids_to_tokens(seqs[85]) == ["Ġ", "0", ".", "8", "5"]
    assert [list(s) for s in scoring.confidence_label_set(smol_tokenizer, scale).token_ids] == seqs
    # Check the first and last items (the middle one shares the code path) against the slow reference.
    for i in (0, 2):
        prefix = scoring.single_prefix(smol_tokenizer, questions[i], answers[i], scale)
        assert scored[i]["prompt_tokens"] == len(prefix)
        ref = reference_distribution(tiny_model, prefix, seqs)
        np.testing.assert_allclose(scored[i]["distribution"], ref, atol=1e-5)
    for s in scored:
        dist = s["distribution"]
        assert dist.shape == (len(scale.labels),)
        assert abs(dist.sum() - 1.0) < 1e-9
        slow = 0.0
        for p, v in zip(dist, scale.values):
            slow += p * v
        assert s["expected"] == pytest.approx(slow, abs=1e-12)
        k = int(np.argmax(dist))
        assert s["argmax_label"] == scale.labels[k] and s["argmax_value"] == scale.values[k]
        assert 0.0 < s["label_mass"] <= 1.0


def test_single_scoring_with_small_causal_blocks(tiny_model, smol_tokenizer, questions, monkeypatch):
    """The trie forward in several causal query blocks (decoder.CAUSAL_BLOCK) reads the same distribution."""
    from metacog_jax.models import decoder

    scale = prompts.confidence_scale("0-1")
    whole = scoring.score_single(tiny_model, smol_tokenizer, questions[:1], ["17"], scale, batch_size=2)
    monkeypatch.setattr(decoder, "CAUSAL_BLOCK", 16)
    jax.clear_caches()  # the compiled forward baked in the old block size
    try:
        blocked = scoring.score_single(tiny_model, smol_tokenizer, questions[:1], ["17"], scale, batch_size=2)
    finally:
        jax.clear_caches()
    assert whole[0]["prompt_tokens"] > 3 * 16  # several blocks
    np.testing.assert_allclose(blocked[0]["distribution"], whole[0]["distribution"], atol=1e-6)


def test_single_prefix_stops_at_confidence_slot(smol_tokenizer, questions):
    prefix = scoring.single_prefix(smol_tokenizer, questions[0], "17", "0-1")
    assert smol_tokenizer.decode(prefix).endswith("The answer is 17 and my confidence score is")


def test_pairwise_matches_slow_reference(tiny_model, smol_tokenizer, questions):
    pairs = [(questions[0], questions[1]), (questions[2], questions[0])]
    p_q1 = scoring.score_pairwise(tiny_model, smol_tokenizer, pairs, batch_size=2)
    seqs = [smol_tokenizer.encode(l, add_special_tokens=False) for l in CHOICE_LABELS]
    assert [smol_tokenizer.convert_ids_to_tokens(s) for s in seqs] == [["Q", "1"], ["Q", "2"]]
    for (q1, q2), p in zip(pairs, p_q1):
        prefix = scoring.pairwise_prefix(smol_tokenizer, q1, q2)
        assert smol_tokenizer.decode(prefix).endswith("<|im_start|>assistant\n")
        ref = reference_distribution(tiny_model, prefix, seqs)
        assert p == pytest.approx(ref[0], abs=1e-5)


def test_mixed_length_batch_equals_one_at_a_time(tiny_model, smol_tokenizer):
    labels = [[15, 16, 17], [15, 16, 18], [15, 20], [31]]
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(100, 40000, size=n).tolist() for n in (3, 40, 17, 25, 5)]
    batched = scoring.score_labels(tiny_model, smol_tokenizer, prefixes, labels, batch_size=3)
    for prefix, row in zip(prefixes, batched):
        # Alone in its batch (the other rows are filler), so no other prefix can leak into it.
        alone = scoring.score_labels(tiny_model, smol_tokenizer, [prefix], labels, batch_size=3)[0]
        np.testing.assert_allclose(row, alone, atol=1e-6)
        np.testing.assert_allclose(row, reference_distribution(tiny_model, prefix, labels), atol=1e-5)


def test_trie_layout_and_mask():
    trie = scoring.build_trie([[7, 8, 9], [7, 8, 10], [7, 11], [12]])
    # Internal nodes: (7,), (7, 8); labels read at rows 0 (prefix end), 1 + node index.
    assert trie.node_tokens.tolist() == [7, 8]
    assert trie.node_depth.tolist() == [1, 2]
    assert trie.read_row.tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 0], [0, 0, 0]]
    assert trie.label_valid.sum(axis=1).tolist() == [3, 3, 2, 1]
    mask, positions = scoring.trie_attention(jnp.asarray([3]), jnp.asarray(trie.node_depth),
                                             jnp.asarray(trie.ancestor), 8)
    mask = np.asarray(mask[0])
    assert np.asarray(positions[0]).tolist() == [0, 1, 2, 3, 4, 0, 0, 0]
    np.testing.assert_array_equal(mask[:3, :3], np.tril(np.ones((3, 3), bool)))  # causal prefix
    assert not mask[:3, 3:].any()  # the prefix never sees the trie
    assert mask[3].tolist() == [True, True, True, True, False, False, False, False]
    assert mask[4].tolist() == [True, True, True, True, True, False, False, False]
    for r in range(5, 8):  # padding sees only itself
        assert mask[r].tolist() == [c == r for c in range(8)]
    assert not np.triu(mask, 1).any()  # lower-triangular: the model may skip key blocks above the diagonal
    # Siblings never see each other.
    sib = scoring.build_trie([[1, 2], [3, 4]])
    m, _ = scoring.trie_attention(jnp.asarray([2]), jnp.asarray(sib.node_depth), jnp.asarray(sib.ancestor), 4)
    assert np.asarray(m[0, 3]).tolist() == [True, True, False, True]
    assert np.asarray(_[0]).tolist() == [0, 1, 2, 2]


def test_one_compile_per_bucket(tiny_model, smol_tokenizer):
    # A label-set shape no other test uses, so this test's compilations are counted exactly.
    labels = [[40, 41, 42, 43], [40, 41, 44, 45], [46, 47, 48, 49], [50]]
    rng = np.random.default_rng(1)
    prefixes = [rng.integers(100, 40000, size=n).tolist() for n in (22, 23, 25, 24, 22, 24, 23, 22, 25, 24)]
    before = scoring._label_logprobs._cache_size()
    # 7 trie nodes + 18 to 25 prefix tokens: every batch needs 25-32 rows, the 32 bucket.
    assert scoring.build_trie(labels).num_nodes == 7
    scoring.score_labels(tiny_model, smol_tokenizer, prefixes, labels, batch_size=2)  # 5 batches
    scoring.score_labels(tiny_model, smol_tokenizer, prefixes[:3], labels, batch_size=2)
    assert scoring._label_logprobs._cache_size() - before == 1


def test_untokenizable_labels_raise_clear_error(smol_tokenizer):
    # Written right after "is" with no separator, "s" merges with it: the one-pass readout would then
    # score tokens the model never reads in that context.
    with pytest.raises(ValueError, match=r"bad labels: labels cannot be scored with this tokenizer: label 's'"):
        scoring.checked_labels(smol_tokenizer, ["s", "t"], "my confidence score is", "", "", "bad labels")


def test_label_set_checks(smol_tokenizer, tiny_model):
    with pytest.raises(ValueError, match=r"labels '5' and '5' tokenize to the same ids"):
        scoring.checked_labels(smol_tokenizer, ["5", "5"], "score is", " ", "", "dup scale")
    with pytest.raises(ValueError, match="proper prefix"):
        scoring.score_labels(tiny_model, smol_tokenizer, [[1, 2]], [[5], [5, 6]])
    with pytest.raises(ValueError, match=r"prefixes\[1\] is empty"):
        scoring.score_labels(tiny_model, smol_tokenizer, [[1, 2], []], [[5], [6]])
    assert scoring.confidence_label_set(smol_tokenizer, "0-1").terminator is None
    assert scoring.confidence_label_set(smol_tokenizer, "0-100").terminator == smol_tokenizer.convert_tokens_to_ids(
        "<|im_end|>")


@pytest.mark.parametrize("text, scale, value", [
    (" 0.85", "0-1", 0.85), (" 0.853.", "0-1", 0.853), (" 85", "0-100", 0.85), (" 85%", "0-1", 0.85),
    (" 7", "0-9", 0.75), (" 7/10", "0-9", 0.7), ("confidence score is 9", "0-10", 0.9), (" 85", "0-1", None),
    (" high", "0-1", None), ("", "0-100", None)])
def test_parse_confidence(text, scale, value):
    got = scoring.parse_confidence(text, scale)
    assert got == (pytest.approx(value) if value is not None else None)


def test_parse_choice():
    assert scoring.parse_choice(" Q2\nQ1: The answer is 4") == 0.0
    assert scoring.parse_choice("Q1") == 1.0
    assert scoring.parse_choice("neither") is None


def test_verbalized_counts_parse_failures(tiny_model, smol_tokenizer, questions):
    from metacog_jax.sampling import Sampler

    sampler = Sampler(tiny_model, smol_tokenizer, batch_size=4)
    out = scoring.verbalized_single(sampler, questions, ["17", None, "B"], "0-1", max_new_tokens=3)
    assert len(out.values) == len(out.texts) == 3
    assert out.n_failures == sum(scoring.parse_confidence(t, "0-1") is None for t in out.texts)


def test_sharded_batches_equal_unsharded():
    """Data x tensor mesh (2 x 2 fake CPU devices, parameters sharded by logical axes) gives the same
    distribution as one device."""
    code = """
        import sys, json
        sys.path.insert(0, "tests")
        import numpy as np
        from conftest import tiny_config
        from metacog_jax import sharding
        from metacog_jax.models.decoder import create_model
        from metacog_jax.evaluation import scoring

        class Tok:
            pad_token_id = 2
            eos_token_id = 2

        labels = [[15, 16, 17], [15, 16, 18], [15, 20], [31]]
        rng = np.random.default_rng(0)
        prefixes = [rng.integers(100, 40000, size=n).tolist() for n in (3, 40, 17, 9, 5)]
        plain = scoring.score_labels(create_model(tiny_config(), seed=0), Tok(), prefixes, labels, batch_size=4)
        mesh = sharding.make_mesh((2, 1, 2))
        model = sharding.init_sharded(lambda: create_model(tiny_config(), seed=0), mesh)
        sharded = scoring.score_labels(model, Tok(), prefixes, labels, batch_size=4, mesh=mesh)
        print(json.dumps(float(np.abs(plain - sharded).max())))
    """
    env = dict(os.environ, XLA_FLAGS=xla_flags(4), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-5
