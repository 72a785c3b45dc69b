"""The memory knobs of large runs change nothing but memory: with a rematerialization policy
(train.remat) or the loss computed in chunks of positions (train.loss_chunk), the train step's loss terms
and gradients equal the plain step's (float32, CPU) within 1e-5 of each leaf's scale."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metacog_jax.config_utils import load_config
from metacog_jax.experiment_config import tiny_model_fields, validate
from metacog_jax.models import lora as lora_lib
from metacog_jax.models.config import ModelConfig
from metacog_jax.models.decoder import create_model
from metacog_jax.train import trainer

REPO = Path(__file__).resolve().parents[1]
T = 40
LABEL_IDS = np.arange(30, 40)  # a 10-token confidence scale, values 0 .. 1
LABEL_VALUES = np.linspace(0.0, 1.0, 10)

# The test model's shape with a 512-token vocabulary (the knobs do not depend on it; 49,152 logits a position
# would make every compile slower), and a Gemma-3-like one: a sliding-window layer (window 4, its own RoPE
# base) then a full one, q/k norms, (1 + w) sandwich norms, scaled embeddings, GeGLU,
# query_pre_attn_scalar != head_dim.
ARCHS = {
    "llama_like": ModelConfig(**dict(tiny_model_fields().to_dict(), vocab_size=512)),
    "gemma3_like": ModelConfig(
        model_type="gemma3", vocab_size=512, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=24, rms_norm_eps=1e-6, rope_theta=1e6, tie_word_embeddings=True,
        qk_norm=True, norm_offset=1.0, sandwich_norms=True, scale_embeddings=True,
        hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=20.0, sliding_window=4,
        layer_types=("sliding_attention", "full_attention"), local_rope_theta=10000.0),
}


def _config(*overrides):
    return load_config(str(REPO / "configs" / "tiny.py"), ["train.loss.brier=0.5", *overrides])


def _batch(vocab: int) -> dict:
    """2 rows of T tokens: packed examples, padding, weighted completion spans of both tasks, and a
    decision position (Brier term) in each row."""
    rng = np.random.default_rng(0)
    b = 2
    toks = rng.integers(3, vocab, (b, T)).astype(np.int32)
    seg = np.ones((b, T), np.int32)
    seg[0, 22:] = 2
    seg[1, T - 5:] = 0
    pos = np.zeros((b, T), np.int32)
    for r in range(b):
        for s in np.unique(seg[r]):
            pos[r, seg[r] == s] = np.arange((seg[r] == s).sum())
    weights = np.zeros((b, T), np.float32)
    weights[0, 10:20] = 1.0
    weights[0, 30:38] = 0.5
    weights[1, 5:24] = 2.0
    task = np.where(weights > 0, np.array([[1], [2]]), 0).astype(np.int32)
    targets = np.roll(toks, -1, 1)
    dmask = np.zeros((b, T), np.float32)
    dvalue = np.zeros((b, T), np.float32)
    for r, p, y in ((0, 19, 0.3), (1, 23, 0.8)):
        dmask[r, p], dvalue[r, p] = 1.0, y
        targets[r, p] = LABEL_IDS[int(round(y * 9))]
    return {k: jnp.asarray(v) for k, v in dict(
        tokens=toks, positions=pos, segment_ids=seg, targets=targets, loss_weights=weights, task_ids=task,
        decision_mask=dmask, decision_value=dvalue).items()}


# An "optimizer" whose state is the last gradient and whose update is zero: the step then returns the
# gradients themselves (no subtraction from the parameters to undo).
KEEP_GRADS = optax.GradientTransformation(
    lambda params: jax.tree.map(jnp.zeros_like, params),
    lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _step(arch: ModelConfig, config):
    """(stats, gradients) of one jitted train step of `config` on the test batch."""
    model = create_model(arch, seed=1)
    if config.train.lora.rank:
        lo = config.train.lora
        lora_lib.apply_lora(model, lo.targets, lo.rank, lo.alpha, lo.dropout, seed=3)
        # B is initialised to zero; a random B makes the adapter matter.
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
            v.set_value(0.05 * jax.random.normal(jax.random.key(hash(path) % 2**31), v.shape))
    graphdef, trainable, frozen, other = trainer.split_model(model, config)
    step_fn = jax.jit(trainer.make_train_step(graphdef, config, KEEP_GRADS, LABEL_IDS, LABEL_VALUES))
    _, grads, stats = step_fn(trainable, KEEP_GRADS.init(trainable), frozen, other, _batch(arch.vocab_size), 0)
    return jax.device_get(stats), jax.device_get(grads)


def _assert_same(got, want):
    (s1, g1), (s0, g0) = got, want
    assert s1.keys() == s0.keys()
    for k in s0:
        np.testing.assert_allclose(s1[k], s0[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert s0["loss_brier"] > 0 and s0["loss_single"] > 0 and s0["loss_pairwise"] > 0
    flat1, flat0 = jax.tree.leaves(g1), jax.tree.leaves(g0)
    assert len(flat1) == len(flat0) > 0
    for a, b in zip(flat1, flat0):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, atol=1e-5 * max(float(np.abs(b).max()), 1e-3), rtol=0)


_PLAIN = {}


def _plain(name: str, loss_positions: int):
    """The plain step (no remat, no chunks) of ARCHS[name], full fine-tuning; computed once per module."""
    if (name, loss_positions) not in _PLAIN:
        _PLAIN[name, loss_positions] = _step(ARCHS[name], _config("train.lora.rank=0",
                                                                  f"train.loss_positions={loss_positions}"))
    return _PLAIN[name, loss_positions]


# Each case compiles a train step: both policies on the Gemma-like model (it has every layer feature), one
# on the Llama-like one.
@pytest.mark.parametrize("name, remat", [("gemma3_like", "matmuls"), ("gemma3_like", "full"), ("llama_like", "full")])
def test_remat_policies_equal_the_plain_loop(name, remat):
    got = _step(ARCHS[name], _config("train.lora.rank=0", "train.loss_positions=16", f"train.remat={remat}"))
    _assert_same(got, _plain(name, 16))


@pytest.mark.parametrize("name, loss_positions, chunk", [("llama_like", 16, 5), ("gemma3_like", 0, 8)],
                         ids=["16_positions_chunk_5_padded", "all_40_positions_chunk_8"])
def test_chunked_loss_equals_the_full_loss(name, loss_positions, chunk):
    got = _step(ARCHS[name], _config("train.lora.rank=0", f"train.loss_positions={loss_positions}",
                                     f"train.loss_chunk={chunk}"))
    _assert_same(got, _plain(name, loss_positions))


def test_remat_and_chunks_with_lora():
    """A LoRA run (adapters on every projection, random B so they matter) under full remat and chunks: the
    adapters' gradients flow through the rematerialized layers as through the plain loop."""
    arch = ARCHS["gemma3_like"]
    lora = ("train.lora.rank=4", "train.loss_positions=16")
    plain = _step(arch, _config(*lora))
    _assert_same(_step(arch, _config(*lora, "train.remat=full", "train.loss_chunk=6")), plain)


def test_lora_dropout_trains_under_remat():
    """LoRA dropout draws fresh masks each step (its RNG streams restarted from the seed and step in the
    state passed to the step, not mutated inside the traced loss): the step runs, plain and under remat,
    and a different step gives different gradients."""
    arch = ARCHS["llama_like"]
    drop = ("train.lora.rank=4", "train.lora.dropout=0.5", "train.loss_positions=16", "train.remat=full")
    config = _config(*drop)
    model = create_model(arch, seed=1)
    lo = config.train.lora
    lora_lib.apply_lora(model, lo.targets, lo.rank, lo.alpha, lo.dropout, seed=3)
    graphdef, trainable, frozen, other = trainer.split_model(model, config)
    step_fn = jax.jit(trainer.make_train_step(graphdef, config, KEEP_GRADS, LABEL_IDS, LABEL_VALUES))
    grads = [jax.device_get(step_fn(trainable, KEEP_GRADS.init(trainable), frozen, other,
                                    _batch(arch.vocab_size), s)[1]) for s in (0, 0, 1)]
    leaves = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in grads]
    assert all(np.isfinite(v).all() for v in leaves)
    np.testing.assert_array_equal(leaves[0], leaves[1])  # the same step: the same masks
    assert np.abs(leaves[0] - leaves[2]).max() > 0  # another step: other masks


def test_chunked_loss_terms_match_loss_terms_directly():
    """chunked_loss_terms against losses.loss_terms on random logits-producing inputs, every term."""
    from metacog_jax.train import losses

    rng = np.random.default_rng(1)
    b, p, d, v = 3, 11, 8, 50
    hidden = jnp.asarray(rng.normal(size=(b, p, d)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
    batch = dict(targets=rng.integers(0, v, (b, p)), loss_weights=rng.uniform(-1, 2, (b, p)).clip(0),
                 task_ids=rng.integers(0, 4, (b, p)), decision_mask=(rng.uniform(size=(b, p)) < 0.3) * 1.0,
                 decision_value=rng.uniform(size=(b, p)))
    batch = {k: jnp.asarray(x) for k, x in batch.items()}
    kw = dict(brier_weight=1.0, label_token_ids=jnp.arange(5), label_values=jnp.linspace(0, 1, 5))
    want = losses.loss_terms(hidden @ head, batch, **kw)
    for chunk in (1, 4, 11, 32):
        got = trainer.chunked_loss_terms(lambda h: h @ head, hidden, batch, chunk, **kw)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} chunk={chunk}")


@pytest.mark.parametrize("field, value, message", [
    ("train.remat", "dots", "train.remat='dots'; choose one of none, matmuls, full"),
    ("train.loss_chunk", "-1", "train.loss_chunk=-1 must be >= 0"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(load_config(str(REPO / "configs" / "tiny.py"), [f"{field}={value}"]))


def test_defaults_are_off():
    config = load_config(str(REPO / "configs" / "tiny.py"))
    assert config.train.remat == "none" and config.train.loss_chunk == 0


def test_lora_adapters_and_their_adam_moments_are_float32_on_a_bfloat16_base():
    """Mixed precision: a bfloat16 base (storage and compute), float32 adapters and optimizer state."""
    import jax.numpy as jnp

    model = create_model(ARCHS["llama_like"], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    lora_lib.apply_lora(model, r".*q_proj", rank=4, alpha=8.0)
    config = _config()
    _, trainable, frozen, _ = trainer.split_model(model, config)
    assert {leaf.dtype for leaf in jax.tree.leaves(trainable)} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(frozen)} == {jnp.dtype("bfloat16")}
    tx, _ = trainer.make_optimizer(config.train)
    moments = [leaf for leaf in jax.tree.leaves(tx.init(trainable)) if leaf.ndim]
    assert moments and {leaf.dtype for leaf in moments} == {jnp.dtype("float32")}
    tokens = jnp.zeros((1, 8), jnp.int32)
    logits, _ = model(tokens, jnp.arange(8)[None])
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
