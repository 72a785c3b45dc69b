"""Fused attention (models/attention_kernels.py): the Pallas splash kernel (in interpret mode on this CPU) and
the jax.nn.dot_product_attention call the cuDNN path makes (XLA's implementation on this CPU) give the
decoder's reference attention: logits and gradients, over packed rows with padding, on sliding-window and
full layers, looped and scanned, with remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metacog_jax.models import attention_kernels, decoder
from metacog_jax.models.config import ModelConfig

T = 128  # splash's smallest block
# Gemma-3-shaped: a sliding-window layer (window 5) then a full one, so both kernels' masks run.
CFG = ModelConfig(model_type="gemma3", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, sliding_window=5, qk_norm=True,
                  norm_offset=1.0, sandwich_norms=True, scale_embeddings=True, hidden_act="gelu_pytorch_tanh",
                  tie_word_embeddings=True, local_rope_theta=10000.0, rope_theta=1e6,
                  layer_types=("sliding_attention", "full_attention"))


def _rows():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 97, (2, T)), jnp.int32)
    seg = np.ones((2, T), np.int32)
    seg[0, 70:] = 2  # two packed examples
    seg[1, 100:] = 0  # padding
    pos = np.zeros((2, T), np.int32)
    for r in range(2):
        for s in np.unique(seg[r]):
            pos[r, seg[r] == s] = np.arange((seg[r] == s).sum())
    return tokens, jnp.asarray(pos), jnp.asarray(seg)


def _loss_and_grads(impl: str, scan: bool = False, window: int = 0, dtype=jnp.float32, segments=None):
    """Logits at the real tokens, loss and gradients of a model computing in `dtype`; `segments` replaces
    the rows' segment ids (the logits are still read at _rows()'s real tokens)."""
    tokens, pos, seg = _rows()
    segments = seg if segments is None else segments
    model = decoder.Decoder(CFG, rngs=nnx.Rngs(0), scan_layers=scan, attention=impl, dtype=dtype)
    graphdef, params = nnx.split(model, nnx.Param)
    real = segments[..., None] > 0

    def loss(params):
        logits, _ = nnx.merge(graphdef, params)(tokens, pos, segment_ids=segments, attention_window=window,
                                                remat="full" if scan else "none")
        logits = logits.astype(jnp.float32)
        return jnp.sum(jnp.where(real, logits, 0.0) ** 2) * 1e-3, logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits)[np.asarray(seg) > 0], float(value), jax.tree.leaves(grads)


@pytest.mark.parametrize("impl, scan, window", [("splash_interpret", False, 0), ("splash_interpret", True, 48),
                                                ("xla", True, 0)])
def test_fused_attention_equals_the_reference(impl, scan, window):
    """window 48: the packed rows' attention window (attention_window) on top of the layers' own."""
    want = _loss_and_grads("reference", scan, window)
    got = _loss_and_grads(impl, scan, window)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert got[1] == pytest.approx(want[1], rel=1e-5)
    for a, b in zip(got[2], want[2]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * max(1.0, float(np.abs(b).max())))


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:  # no GPU backend: jax[cuda] not installed, none visible, or JAX_PLATFORMS=cpu
        return None


def test_cudnn_on_a_gpu_equals_the_reference():
    """The cuDNN kernel itself (bfloat16, packed rows with padding, a sliding and a full layer) against the
    reference attention in the same dtype on the same GPU, logits and gradients. Runs only where jax sees a
    GPU: `JAX_PLATFORMS=cuda,cpu pytest tests/test_attention_kernels.py -k gpu` with jax[cuda12] installed."""
    gpu = _gpu()
    if gpu is None:
        pytest.skip("needs a GPU that jax sees (jax[cuda12], JAX_PLATFORMS=cuda,cpu): cuDNN runs only there")
    merged_segments = (_rows()[2] > 0).astype(jnp.int32)  # the packed examples see each other
    with jax.default_device(gpu):
        want = _loss_and_grads("reference", dtype=jnp.bfloat16)
        got = _loss_and_grads("cudnn", dtype=jnp.bfloat16)
        merged = _loss_and_grads("reference", dtype=jnp.bfloat16, segments=merged_segments)
    tol = 3e-2 * max(1.0, float(np.abs(want[0]).max()))  # bfloat16: about 3 significant digits
    assert np.abs(merged[0] - want[0]).max() > 5 * tol, "the tolerance would not see a wrong segment mask"
    np.testing.assert_allclose(got[0], want[0], atol=tol)
    assert got[1] == pytest.approx(want[1], rel=3e-2)
    for a, b in zip(got[2], want[2]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-2 * max(1.0, float(np.abs(b).max())))


def test_a_float32_model_keeps_the_reference_where_cudnn_needs_half_precision():
    """cuDNN's fused attention takes bfloat16/float16 only (jax raises NotImplementedError for float32), so a
    float32 model built for cuDNN runs the reference attention. Checked on the CPU, where the cuDNN call
    itself would fail ("cuDNN is not detected")."""
    assert attention_kernels.supports("cudnn", 128, jnp.bfloat16) and attention_kernels.supports("cudnn", 128)
    assert not attention_kernels.supports("cudnn", 128, jnp.float32)
    assert attention_kernels.supports("xla", 128, jnp.float32)
    tokens, pos, seg = _rows()
    logits = {}
    for impl in ("reference", "cudnn"):
        model = decoder.Decoder(CFG, rngs=nnx.Rngs(0), attention=impl)
        logits[impl] = np.asarray(model(tokens, pos, segment_ids=seg)[0])
    np.testing.assert_array_equal(logits["cudnn"], logits["reference"])


def test_auto_picks_by_platform_and_unknown_names_fail():
    assert attention_kernels.resolve("auto", "tpu") == "splash"
    assert attention_kernels.resolve("auto", "gpu") == "cudnn"
    assert attention_kernels.resolve("auto", "cpu") == "reference"
    assert attention_kernels.resolve("splash", "cpu") == "splash_interpret"  # a check, not a speed-up
    assert attention_kernels.resolve("cudnn", "cpu") == "xla"
    with pytest.raises(ValueError, match="model.attention='flash'.*auto, reference, splash, cudnn"):
        attention_kernels.resolve("flash", "tpu")
    # rows splash cannot tile (not a multiple of 128 tokens) keep the reference attention
    assert not attention_kernels.supports("splash", 100) and attention_kernels.supports("splash", 384)


def test_cpu_config_builds_the_reference_attention():
    from metacog_jax.config_utils import load_config
    from metacog_jax.experiment_config import validate
    from metacog_jax.models.build import attention_for

    config = load_config("configs/tiny.py", [])
    assert config.model.attention == "auto" and attention_for(config) == "reference"
    with pytest.raises(ValueError, match="model.attention='flash'"):
        validate(load_config("configs/tiny.py", ["model.attention=flash"]))
