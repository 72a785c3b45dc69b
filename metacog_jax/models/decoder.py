"""Decoder-only transformer in Flax NNX, in the Hugging Face layout (Llama, Mistral, Qwen2, Qwen3 and
Gemma 3 families; their differences are switches on ModelConfig).

Module and parameter names mirror transformers' (`layers.3.self_attn.q_proj`), kernels are stored
[in, out] (transposed once at import), and rotary embeddings use the split-halves convention
(`rotate_half`), so a checkpoint loads without permuting anything. Layers are kept as a list of
modules (`layers.3.self_attn.q_proj`, so LoRA can wrap any projection of any layer), or, with
`scan_layers=True`, as one DecoderLayer whose parameters are stacked along a leading layer axis
(`layers.self_attn.q_proj`, logical axis "layers") and run by `jax.lax.scan`: the compiled program holds
one layer's code instead of L copies, so compile time no longer grows with depth (what a 70B model on a
TPU pod needs). The same function either way; `scan_layers_of`/`unscan_layers_of` convert a model and
`scanned_state`/`unscanned_state` a checkpoint's state between the layouts. Training may rematerialize
each layer in the backward pass (`remat`, REMAT_POLICIES).

Every parameter carries a `logical_axes` metadata entry (batch, embed, mlp, heads, kv_heads, vocab) that
`metacog_jax.sharding` maps onto mesh axes through the config's rules table.

Shapes: B batch, T query length, S key length (cache size when decoding), D hidden, N query heads,
K key/value heads, G = N // K, H head dim, V vocab.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metacog_jax.models import attention_kernels
from metacog_jax.models.config import ModelConfig, rope_inverse_frequencies
from metacog_jax.sharding import with_logical_constraint

LOGICAL_AXES = "logical_axes"
# Added to the attention scores of masked pairs. Finite, so a fully masked row (padding) stays finite and
# the sum score + MASKED cannot overflow; exp(MASKED - max) underflows to exactly 0 otherwise.
MASKED = -1e30
_INIT = nnx.initializers.normal(0.02)
# Without a cache and with the built-in causal mask, queries are processed in blocks of this many
# positions, each block attending only to keys up to its own end: the (all-masked) blocks above the
# diagonal are never computed (3/8 of the attention FLOPs at T = 4 blocks; the last block may be short).
CAUSAL_BLOCK = 128


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul_sum_f32(x, w, transposed: bool, out_dtype):
    """x [..., K] times w [K, N] (w [N, K] when `transposed`: a tied embedding read as the LM head) on
    low-precision operands: products summed in float32, the result cast to out_dtype. Both gradient
    matmuls likewise run on x's dtype summed in float32 (autodiff would run them on float32 copies of the
    operands). Reverse-mode differentiation only (jax.jvp / forward mode through it fails)."""
    dims = (((x.ndim - 1,), (1 if transposed else 0,)), ((), ()))
    return jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(out_dtype)


def _matmul_sum_f32_fwd(x, w, transposed, out_dtype):
    return _matmul_sum_f32(x, w, transposed, out_dtype), (x, w)


def _matmul_sum_f32_bwd(transposed, out_dtype, res, g):
    x, w = res
    g = g.astype(x.dtype)
    dx = jnp.matmul(g, w if transposed else w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    rows = (((0,), (0,)), ((), ()))  # sum over the flattened tokens
    dw = jax.lax.dot_general(*((g2, x2) if transposed else (x2, g2)), rows, preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype)


_matmul_sum_f32.defvjp(_matmul_sum_f32_fwd, _matmul_sum_f32_bwd)


_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _dot_accumulate_f32(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """nnx.Linear's dot_general. float32 operands (or any call asking for a precision, an output dtype or
    an output sharding): lax.dot_general as is. bfloat16/float16 compute: products summed in float32 and
    the result cast back, forward and backward (_matmul_sum_f32) — as TPUs and GPUs sum anyway, and on CPU
    the only way XLA takes its bfloat16 matrix units (AMX): 1,760 GFLOP/s on a 1024x576x1536 matmul,
    against 311 for a bfloat16-accumulated result."""
    out_sharding = kw.pop("out_sharding", None)
    if (lhs.dtype not in _LOW_PRECISION or lhs.dtype != rhs.dtype or precision is not None
            or preferred_element_type is not None or out_sharding is not None or kw):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, out_sharding=out_sharding, **kw)
    (lc, rc), (lb, rb) = dimension_numbers
    if tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb and rhs.ndim == 2:
        return _matmul_sum_f32(lhs, rhs, False, lhs.dtype)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=jnp.float32).astype(lhs.dtype)


def _linear(cfg: ModelConfig, d_in: int, d_out: int, axes: tuple, *, bias: bool, dtype, param_dtype,
            rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, kernel_init=_INIT,
        dot_general=_dot_accumulate_f32, kernel_metadata={LOGICAL_AXES: axes},
        bias_metadata={LOGICAL_AXES: axes[1:]}, rngs=rngs)


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32, scaled by (offset + a learned weight): offset 0 with the
    weight initialised to 1 (Llama, Qwen), offset 1 with the weight initialised to 0 (Gemma)."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype, offset: float = 0.0):
        self.eps = eps
        self.dtype = dtype
        self.offset = float(offset)
        init = jnp.zeros if self.offset else jnp.ones
        self.weight = nnx.Param(init((dim,), param_dtype), **{LOGICAL_AXES: (None,)})

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        scale = self.weight[...].astype(jnp.float32)
        if self.offset:
            scale = scale + self.offset
        return (scale * x32).astype(self.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array, local: bool = False) -> tuple[jax.Array, jax.Array]:
    """sin, cos of shape [B, T, H//2] (float32) for integer positions [B, T]; local: those of the
    sliding-window layers (see rope_inverse_frequencies)."""
    inv_freq = jnp.asarray(np.asarray(rope_inverse_frequencies(cfg, local), np.float32))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate [B, T, heads, H] by split-halves RoPE (x1*cos - x2*sin, x2*cos + x1*sin)."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin[:, :, None, :], cos[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _sharded_like_rows(arrays):
    """New cache arrays (one [L, B, K, S, H] array or a tuple of L [B, K, S, H]) constrained like the
    activations under a mesh: rows over (data, fsdp), kv heads over tensor (a no-op without a mesh). Without
    it the compiler may keep arrays made inside a step, and returned from it, whole on every chip."""
    if isinstance(arrays, (tuple, list)):
        return tuple(with_logical_constraint(a, ("batch", "kv_heads", "length", "kv")) for a in arrays)
    return with_logical_constraint(arrays, ("layers", "batch", "kv_heads", "length", "kv"))


class KVCache(NamedTuple):
    """Per-layer keys/values [B, K, S, H] (heads-major, the layout attention multiplies in), slot validity
    [B, S] and the next write slot (scalar).

    Optionally a read-only prefix shared by groups of rows (`share_prefix`): prefix keys/values
    [B / n, K, P, H] and an additive attention bias [B / n, P] (0 for valid slots, MASKED for padding),
    where rows r*n .. r*n + n - 1 continue prefix row r. Every token written to the cache then attends to
    all valid prefix slots as well as to the cache's own slots, and the prefix is stored and read once per
    group instead of once per row.
    """

    keys: tuple[jax.Array, ...] | jax.Array  # a tuple of L arrays, or one [L, B, K, S, H] (scanned layers)
    values: tuple[jax.Array, ...] | jax.Array
    valid: jax.Array
    index: jax.Array
    prefix_keys: tuple[jax.Array, ...] | None = None
    prefix_values: tuple[jax.Array, ...] | None = None
    prefix_bias: jax.Array | None = None

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32, stacked: bool = False) -> "KVCache":
        """An empty cache; `stacked`: one [L, ...] array per keys/values, as a scanned Decoder runs it."""
        shape = (batch, cfg.num_kv_heads, length, cfg.head_dim)
        if stacked:
            zeros = jnp.zeros((cfg.num_layers, *shape), dtype)
        else:
            zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        zeros = _sharded_like_rows(zeros)
        return cls(zeros, zeros, jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))

    @property
    def stacked(self) -> bool:
        return not isinstance(self.keys, (tuple, list))

    def _per_layer(self, fn, arrays):
        """fn over each layer's [B, ...] array, keeping the layout (tuple or stacked)."""
        return jax.vmap(fn)(arrays) if self.stacked else tuple(map(fn, arrays))

    def repeat(self, n: int) -> "KVCache":
        """Each batch row repeated n times consecutively ([B, ...] -> [B*n, ...]): one prefill, n samples."""
        if self.prefix_keys is not None:
            raise ValueError("repeat() of a cache with a shared prefix")
        rep = lambda a: jnp.repeat(a, n, axis=0)
        return KVCache(self._per_layer(rep, self.keys), self._per_layer(rep, self.values), rep(self.valid),
                       self.index)

    def share_prefix(self, n: int, length: int) -> "KVCache":
        """This (filled) cache becomes a prefix shared by n consecutive rows per batch row, followed by
        `length` empty own slots per row ([B*n, K, length, H]): one prefill, n continuations, each prefix
        stored and read once. Slots of the prefix that were never written must be invalid."""
        if self.prefix_keys is not None:
            raise ValueError("the cache already has a shared prefix")
        b, k, _, h = self.keys[0].shape
        zeros = _sharded_like_rows(self._per_layer(lambda a: jnp.zeros((b * n, k, length, h), a.dtype), self.keys))
        bias = jnp.where(self.valid, 0.0, MASKED).astype(jnp.float32)  # once, not per decoded token
        return KVCache(zeros, zeros, jnp.zeros((b * n, length), bool), jnp.zeros((), jnp.int32),
                       self.keys, self.values, bias)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = _linear(cfg, d, n * h, ("embed", "heads"), bias=cfg.qkv_bias, **kw)
        self.k_proj = _linear(cfg, d, k * h, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
        self.v_proj = _linear(cfg, d, k * h, ("embed", "kv_heads"), bias=cfg.qkv_bias, **kw)
        self.o_proj = _linear(cfg, n * h, d, ("heads", "embed"), bias=False, **kw)
        if cfg.qk_norm:  # Qwen3, Gemma 3: RMSNorm over each query and key head, before RoPE
            norm = dict(offset=cfg.norm_offset, dtype=dtype, param_dtype=param_dtype)
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, **norm)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, **norm)
        self.qk_norm = cfg.qk_norm
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, h
        self.scale = cfg.attention_scale

    def __call__(self, x, sin, cos, bias, kv=None, index=None, causal=False, prefix=None, window=0, fused=None):
        """fused: (implementation, segment_ids [B, T], window, sliding) to run attention_kernels' fused kernel
        instead of the bias (no cache, causal rows): window an int, or (full, sliding) windows chosen by the
        (possibly traced) sliding flag.

        x [B*T, D] (flattened tokens); sin, cos [B, T, H//2]; bias [B, T, S] float32 (0 where a query
        may attend, MASKED where not); kv: this layer's cache (keys, values) [B, K, S, H] or None; causal:
        the bias masks every key after its query (no cache), so key blocks above the diagonal can be skipped;
        window: with causal, the bias also masks every key `window` or more slots before its query (0: no
        such promise), so key blocks entirely before that are skipped too; prefix: (keys, values
        [B/n, K, P, H], bias [B/n, P], and None or a per-query bias [T, P] — a sliding window reaching into
        the prefix) of a prefix shared by groups of n rows, attended to besides kv (see KVCache.share_prefix).

        Returns the output [B*T, D] and the updated (keys, values) (None without a cache).

        Layout: queries are grouped as [B, K, G, T, H] (G = heads per kv head) and keys/values kept as
        [B, K, S, H], so both attention matmuls are plain batched matmuls and no [T, S]-sized array is ever
        transposed (on CPU those transposes cost more than the matmuls). The softmax is normalised after
        the value matmul: out = (exp(s - max) @ V) / sum exp(s - max), which is the same function.
        """
        b, t = sin.shape[:2]
        n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
        q, key = self.q_proj(x).reshape(b, t, n, h), self.k_proj(x).reshape(b, t, k, h)
        if self.qk_norm:
            q, key = self.q_norm(q), self.k_norm(key)
        q = apply_rope(q, sin, cos)
        key = apply_rope(key, sin, cos).transpose(0, 2, 1, 3)
        val = self.v_proj(x).reshape(b, t, k, h).transpose(0, 2, 1, 3)
        new_kv = None
        if kv is not None:
            keys = jax.lax.dynamic_update_slice(kv[0], key.astype(kv[0].dtype), (0, 0, index, 0))
            vals = jax.lax.dynamic_update_slice(kv[1], val.astype(kv[1].dtype), (0, 0, index, 0))
            new_kv = (keys, vals)
            key, val = keys.astype(x.dtype), vals.astype(x.dtype)
        if fused is not None:
            return self.o_proj(_fused(fused, (q * self.scale).transpose(0, 2, 1, 3), key, val)
                               .transpose(0, 2, 1, 3).reshape(b * t, n * h)), new_kv
        q = (q * self.scale).reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)
        c = CAUSAL_BLOCK
        if prefix is not None:
            out = _attend_with_prefix(q, key, val, bias, *prefix)
        elif causal and c and t > c:
            lo = [window_start(i, window, c) for i in range(0, t, c)]
            out = jnp.concatenate([_attend(q[:, :, :, i:i + c], key[:, :, j:i + c], val[:, :, j:i + c],
                                           bias[:, i:i + c, j:i + c]) for i, j in zip(range(0, t, c), lo)],
                                  axis=3)
        else:
            out = _attend(q, key, val, bias)
        return self.o_proj(out.transpose(0, 3, 1, 2, 4).reshape(b * t, n * h)), new_kv


def _fused(fused, q, key, val):
    """attention_kernels.fused_attention with the layer's window (a traced sliding flag picks between two)."""
    impl, segments, window, sliding = fused
    run = lambda w: attention_kernels.fused_attention(impl, q, key, val, segments, w)
    if isinstance(window, tuple):
        full, local = window
        if full == local:
            return run(full)
        if isinstance(sliding, (bool, np.bool_)):
            return run(local if sliding else full)
        return jax.lax.cond(sliding, lambda: run(local), lambda: run(full))
    return run(window)


def window_start(i: int, window: int, block: int) -> int:
    """First key slot the query block [i, i + block) needs when no query sees a key `window` or more slots
    before it (window 0: no limit), rounded down to a multiple of `block`."""
    if window <= 0:
        return 0
    return max(0, (i - window + 1) // block * block)


def _attend_with_prefix(q, key, val, bias, p_key, p_val, p_bias, p_query_bias=None):
    """_attend over a row's own keys plus the keys of a prefix shared by groups of n = B / B_p rows.

    q [B, K, G, T, H]; own keys/values [B, K, S, H] with bias [B, T, S]; prefix keys/values [B_p, K, P, H]
    with bias [B_p, P] (the same for every query: the prefix precedes them all), plus, when given, a bias
    [T, P] that depends on the query (a sliding window). One softmax over both; the prefix is read once
    per group, the group's n*G*T queries being the rows of one matmul.
    """
    b, k, g, t, h = q.shape
    bp = p_key.shape[0]
    n = b // bp

    def grouped(a):  # [B, K, G, T, *r] -> [B_p, K, n*G*T, *r]
        r = a.shape[4:]
        a = a.reshape(bp, n, k, g, t, *r)
        return jnp.moveaxis(a, 1, 2).reshape(bp, k, n * g * t, *r)

    def ungrouped(a):  # [B_p, K, n*G*T, *r] -> [B, K, G, T, *r]
        r = a.shape[3:]
        a = a.reshape(bp, k, n, g, t, *r)
        return jnp.moveaxis(a, 2, 1).reshape(b, k, g, t, *r)

    own = jnp.einsum("bkgth,bksh->bkgts", q, key, preferred_element_type=jnp.float32) + bias[:, None, None]
    pre = jnp.einsum("bkqh,bksh->bkqs", grouped(q), p_key, preferred_element_type=jnp.float32)
    pre = pre + p_bias[:, None, None, :]
    if p_query_bias is not None:  # grouped rows run over (n, G, T): the [T, P] bias repeats n*G times
        pre = pre + jnp.tile(p_query_bias, (n * g, 1))[None, None]
    peak = jnp.maximum(jnp.max(own, axis=-1), ungrouped(jnp.max(pre, axis=-1)))  # [B, K, G, T]
    peak = jax.lax.stop_gradient(peak)
    w_own = jnp.exp(own - peak[..., None])
    w_pre = jnp.exp(pre - grouped(peak)[..., None])
    out = jnp.einsum("bkgts,bksh->bkgth", w_own.astype(q.dtype), val, preferred_element_type=jnp.float32)
    out = out + ungrouped(jnp.einsum("bkqs,bksh->bkqh", w_pre.astype(q.dtype), p_val,
                                     preferred_element_type=jnp.float32))
    total = jnp.sum(w_own, axis=-1) + ungrouped(jnp.sum(w_pre, axis=-1))
    return (out / total[..., None]).astype(q.dtype)


def _attend(q, key, val, bias):
    """Softmax attention of queries [B, K, G, T, H] (pre-scaled) over keys/values [B, K, S, H] with an
    additive bias [B, T, S]; returns [B, K, G, T, H] in q's dtype."""
    scores = jnp.einsum("bkgth,bksh->bkgts", q, key, preferred_element_type=jnp.float32)
    scores = scores + bias[:, None, None, :, :]
    peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.exp(scores - peak)
    out = jnp.einsum("bkgts,bksh->bkgth", weights.astype(q.dtype), val, preferred_element_type=jnp.float32)
    return (out / jnp.sum(weights, axis=-1, keepdims=True)).astype(q.dtype)


# SwiGLU (Llama, Qwen, Mistral) or GeGLU with the tanh approximation of GELU (Gemma).
_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True)}


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = _linear(cfg, d, f, ("embed", "mlp"), **kw)
        self.up_proj = _linear(cfg, d, f, ("embed", "mlp"), **kw)
        self.down_proj = _linear(cfg, f, d, ("mlp", "embed"), **kw)

        self.act = _ACTIVATIONS[cfg.hidden_act]

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block. Llama/Qwen/Mistral: x + attn(norm(x)), then + mlp(post_attention_layernorm(x)).
    Gemma (sandwich_norms): post_attention_layernorm normalises the attention's output, and the MLP sits
    between pre_feedforward_layernorm and post_feedforward_layernorm."""

    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, offset=cfg.norm_offset)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.sandwich = cfg.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x, sin, cos, bias, kv=None, index=None, causal=False, prefix=None, window=0, fused=None):
        attn, new_kv = self.self_attn(self.input_layernorm(x), sin, cos, bias, kv, index, causal, prefix, window,
                                      fused)
        if self.sandwich:
            x = x + self.post_attention_layernorm(attn)
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), new_kv
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), new_kv


# Rematerialization of each decoder layer in the backward pass (config train.remat): which of the layer's
# intermediates the forward keeps, the rest being recomputed from the layer's input.
# "matmuls" keeps the outputs of matmuls without batch dimensions: every projection (tokens are flattened
# to [B*T, D] between layers, so q/k/v/o and the MLP are plain 2-D matmuls), but not the attention
# einsums (batched over B and the kv heads), whose [B, K, G, T, S] float32 scores are the largest
# activation of a layer; checkpoint_dots would keep those too. "full" keeps only the layer's input.
REMAT_POLICIES = {
    "none": None,
    "matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _rematerialized_layer(layer: "DecoderLayer", policy, x, sin, cos, bias, causal: bool, window: int, fused=None):
    """layer(x, ...) without a cache or prefix, under jax.checkpoint with `policy`. The layer is split into
    parameters and the rest (LoRA dropout's RNG counters): the parameters go in as arguments, so their
    gradients flow, and the rest comes back out and is written to the layer, so a mutated RNG is kept."""
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def run(params, rest, x, sin, cos, bias, segments):
        inner = nnx.merge(graphdef, params, rest)
        f = None if fused is None else (fused[0], segments, *fused[2:])
        out, _ = inner(x, sin, cos, bias, None, None, causal, None, window, f)
        return out, nnx.state(inner, nnx.Not(nnx.Param))

    segments = None if fused is None else fused[1]
    out, rest = jax.checkpoint(run, policy=policy)(params, rest, x, sin, cos, bias, segments)
    nnx.update(layer, rest)
    return out


def stack_layers(layers) -> nnx.Module:
    """One module whose every variable is the layers' variables stacked on a new leading axis (logical
    axis "layers" prepended to their axes). The layers must have the same structure (e.g. LoRA on the same
    projections of each)."""
    layers = list(layers)
    graphdefs, states = zip(*(nnx.split(layer) for layer in layers))
    if any(g != graphdefs[0] for g in graphdefs[1:]):
        raise ValueError("scan_layers: the layers differ in structure (LoRA adapters on some layers only?); "
                         "stacked layers must all have the same modules")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    for _, var in nnx.to_flat_state(stacked):
        if var.has_metadata(LOGICAL_AXES):
            var.set_metadata(LOGICAL_AXES, ("layers",) + tuple(var.get_metadata()[LOGICAL_AXES]))
    return nnx.merge(graphdefs[0], stacked)


def unstack_layers(stacked: nnx.Module) -> list:
    """The inverse of stack_layers: one module per slice of the leading axis."""
    graphdef, state = nnx.split(stacked)
    count = {leaf.shape[0] for leaf in jax.tree.leaves(state)}
    if len(count) != 1:
        raise ValueError(f"not a stacked layer module: leading sizes {sorted(count)}")
    layers = []
    for i in range(count.pop()):
        one = jax.tree.map(lambda a: a[i], state)
        for _, var in nnx.to_flat_state(one):
            axes = var.get_metadata().get(LOGICAL_AXES)
            if axes and axes[0] == "layers":
                var.set_metadata(LOGICAL_AXES, tuple(axes[1:]))
        layers.append(nnx.merge(graphdef, one))
    return layers


class Decoder(nnx.Module):
    """The language model: token embedding, decoder layers, final norm, LM head (tied or not).

    scan_layers: keep the layers stacked and run them with jax.lax.scan (see the module docstring).
    attention: see attention_kernels (resolved for the devices the model runs on, e.g. "splash" on a TPU)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None, scan_layers: bool = False, attention: str = "reference"):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.dtype = dtype
        # A resolved attention_kernels implementation (reference, splash, splash_interpret, cudnn, xla): what
        # training and one-pass scoring rows use; the KV-cache paths and tree masks keep the reference.
        self.attention = str(attention)
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, embedding_init=_INIT,
            embedding_metadata={LOGICAL_AXES: ("vocab", "embed")}, rngs=rngs)
        # Created one by one either way, so a scanned model's weights are the same random draws.
        layers = [DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.num_layers)]
        self.scan_layers = bool(scan_layers)
        self.layers = stack_layers(layers) if scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype,
                            offset=cfg.norm_offset)
        if not cfg.tie_word_embeddings:
            self.lm_head = _linear(cfg, cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False,
                                   dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def _sliding_inputs(self, positions, mask, cache, tree: bool, full):
        """(sin, cos, bias, prefix biases, block-skipping window) of the sliding-window layers: the full
        layers' mask narrowed to the window (see __call__), their own RoPE when the config has one."""
        cfg = self.config
        w = cfg.sliding_window
        sin, cos = rope_tables(cfg, positions, local=True) if cfg.local_rope_theta else full[:2]
        t = positions.shape[1]
        prefix = full[3]
        if cache is not None:
            q_slots = cache.index + jnp.arange(t)
            near = (q_slots[:, None] - jnp.arange(mask.shape[-1])[None, :] < w)[None]
            if prefix is not None:  # the prefix's P slots come before the cache's own
                p = cache.prefix_keys[0].shape[2]
                reach = (p + q_slots)[:, None] - jnp.arange(p)[None, :] < w
                prefix = (prefix[0], jnp.where(reach, 0.0, MASKED).astype(jnp.float32))
        elif tree:
            near = positions[:, :, None] - positions[:, None, :] < w
        else:
            slots = jnp.arange(t)
            near = (slots[:, None] - slots[None, :] < w)[None]
        bias = jnp.where(mask & near, 0.0, MASKED).astype(jnp.float32)
        window = full[4]
        if cache is None and not tree:  # slots: the causal blocks may skip the keys before the window
            window = min(window, w) if window else w
        return sin, cos, bias, prefix, window

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-norm'd hidden states [B, ..., D] -> float32 logits [B, ..., V] (sharded like the batch)."""
        hidden = with_logical_constraint(hidden, ("batch",) + (None,) * (hidden.ndim - 1))
        if self.config.tie_word_embeddings and jnp.dtype(self.dtype) in _LOW_PRECISION:
            emb = self.embed_tokens.embedding[...].astype(self.dtype)
            out = _matmul_sum_f32(hidden.astype(self.dtype), emb, True, jnp.float32)
        elif self.config.tie_word_embeddings:
            out = self.embed_tokens.attend(hidden)
        else:
            out = self.lm_head(hidden)
        return with_logical_constraint(out.astype(jnp.float32), ("batch",) + (None,) * (out.ndim - 2) + ("vocab",))

    def __call__(self, tokens: jax.Array, positions: jax.Array, *, segment_ids: jax.Array | None = None,
                 cache: KVCache | None = None, attention_mask: jax.Array | None = None,
                 mask_is_causal: bool = False, attention_window: int = 0, return_hidden: bool = False,
                 remat: str = "none"):
        """Run the model.

        tokens, positions: int [B, T]. segment_ids: int [B, T]; 0 marks padding, equal non-zero ids
        attend to each other (packing); defaults to all ones. With a cache the T new tokens are written at
        slots [cache.index, cache.index + T) and attend to every valid earlier slot.

        attention_mask: bool [B, T, T], overrides the causal/segment mask (no cache only); used to score a
        tree of continuations in one pass (each token attends to the prompt and its own ancestors).
        mask_is_causal: the caller promises attention_mask never lets a token attend to a later slot, so
        attention may skip the key blocks above the diagonal (the built-in mask always allows this).
        attention_window: without a cache, a token attends only to the `attention_window` slots ending at its
        own (0: no limit). For rows packed with examples no longer than the window this changes nothing —
        each token already sees only its own example — and attention skips the key blocks before the window.

        Sliding-window layers (config.layer_types) attend only to the config.sliding_window slots ending at
        the query's own, as transformers counts them: slots of the row (or of the cache), and, with an
        attention_mask (a tree of continuations laid side by side), positions, which count the slots of the
        sequence each branch stands for. The cache keeps every slot; the window is a mask.

        remat: rematerialization of each layer in the backward pass, a key of REMAT_POLICIES ("none": the
        plain loop; "matmuls": keep only the projections' outputs; "full": keep only each layer's input).
        The same function either way; the trainer sets it (config train.remat), no cache allowed.

        Returns (logits [B, T, V] float32 — or final hidden states [B, T, D] if return_hidden — , cache).
        """
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
        if remat != "none" and cache is not None:
            raise ValueError(f"remat={remat!r} is for training: it cannot be combined with a KV cache")
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        # Tokens flattened to [B*T, D] between layers: every projection is then a plain 2-D matmul, whose
        # weight gradient XLA:CPU computes without the strided transposes a [B, T, D] operand costs.
        cfg = self.config
        x = self.embed_tokens(tokens).reshape(b * t, -1)
        if cfg.scale_embeddings:  # Gemma: sqrt(D), rounded to the parameters' dtype as transformers does
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, self.embed_tokens.param_dtype).astype(x.dtype)
        # Under a mesh (sharding.activation_context, set by the jitted steps) the tokens between layers stay
        # sharded like the batch and whole along D: each projection then all-gathers its (FSDP-sharded)
        # weight, instead of XLA splitting the contraction over D and all-reducing [B*T, F] activations.
        x = with_logical_constraint(x, ("batch", None))
        sin, cos = rope_tables(cfg, positions)
        if attention_mask is not None:
            if cache is not None:
                raise ValueError("attention_mask cannot be combined with a KV cache")
            mask = attention_mask
        elif cache is None:
            same = segment_ids[:, :, None] == segment_ids[:, None, :]
            causal = jnp.tril(jnp.ones((t, t), bool))[None]
            mask = same & causal & (segment_ids[:, None, :] != 0)
        else:
            valid = jax.lax.dynamic_update_slice(cache.valid, segment_ids != 0, (0, cache.index))
            q_slots = cache.index + jnp.arange(t)
            k_slots = jnp.arange(valid.shape[1])
            mask = (k_slots[None, None, :] <= q_slots[None, :, None]) & valid[:, None, :]
        causal = cache is None and (attention_mask is None or mask_is_causal)
        window = int(attention_window)
        if window < 0 or (window and cache is not None):
            raise ValueError(f"attention_window={attention_window} must be >= 0 and needs no KV cache")
        if window:
            slots = jnp.arange(t)
            mask = mask & ((slots[:, None] - slots[None, :]) < window)[None]
        bias = jnp.where(mask, 0.0, MASKED).astype(jnp.float32)  # once, shared by every (full) layer
        prefix = None
        if cache is not None and cache.prefix_keys is not None:
            prefix = (cache.prefix_bias, None)
        full = (sin, cos, bias, prefix, window if causal else 0)
        local = full
        if cfg.has_sliding_layers:
            local = self._sliding_inputs(positions, mask, cache, attention_mask is not None, full)
        fused = None
        if (self.attention != "reference" and cache is None and attention_mask is None
                and attention_kernels.supports(self.attention, t, x.dtype)):
            w_local = min(w for w in (window, cfg.sliding_window) if w) if (window or cfg.sliding_window) else 0
            fused = (self.attention, segment_ids, (window, w_local if cfg.has_sliding_layers else window))
        run = self._scanned if self.scan_layers else self._looped
        x, cache = run(x, full, local, cache, causal, remat, fused)
        x = self.norm(x).reshape(b, t, -1)
        if cache is not None:
            cache = cache._replace(valid=valid, index=cache.index + t)
        return (x if return_hidden else self.logits(x)), cache

    def _looped(self, x, full, local, cache, causal: bool, remat: str, fused=None):
        """The layers one after another (unscanned model); returns x and the cache with the new keys/values."""
        cfg = self.config
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            sin_i, cos_i, bias_i, prefix_i, window_i = local if cfg.is_sliding(i) else full
            if prefix_i is not None:
                prefix_i = (cache.prefix_keys[i], cache.prefix_values[i], *prefix_i)
            fused_i = None if fused is None else (*fused, cfg.is_sliding(i))
            if remat != "none":
                x = _rematerialized_layer(layer, REMAT_POLICIES[remat], x, sin_i, cos_i, bias_i, causal, window_i,
                                          fused_i)
            else:
                x, new_kv = layer(x, sin_i, cos_i, bias_i, kv, None if cache is None else cache.index, causal,
                                  prefix_i, window_i, fused_i)
                if new_kv is not None:
                    new_keys.append(new_kv[0])
                    new_values.append(new_kv[1])
            x = with_logical_constraint(x, ("batch", None))
        if cache is not None:
            cache = cache._replace(keys=tuple(new_keys), values=tuple(new_values))
        return x, cache

    def _scanned(self, x, full, local, cache, causal: bool, remat: str, fused=None):
        """The layers of a scanned model: jax.lax.scan over the stacked parameters (and, decoding, the stacked
        cache, carried so each step writes only its new slots). Sliding-window and full layers alternate
        through a per-layer flag that selects their RoPE tables and masks; the causal block skipping uses
        the wider of the two windows (the masks still apply each layer's own). Non-parameter state (LoRA
        dropout's RNG streams) is carried, so each layer draws its own masks."""
        cfg = self.config
        graphdef, params, rest = nnx.split(self.layers, nnx.Param, ...)
        sliding = np.array([cfg.is_sliding(i) for i in range(cfg.num_layers)])
        mixed = bool(sliding.any() and not sliding.all())
        if sliding.all():
            full = local
        windows = (full[4], local[4]) if mixed else (full[4],)
        window = 0 if min(windows) == 0 else max(windows)
        prefix_bias = None
        if full[3] is not None:  # full layers: the prefix's own bias; sliding ones also a [T, P] window bias
            prefix_bias = full[3][0]
            q_full, q_local = full[3][1], local[3][1]
            if mixed and q_local is not None:
                q_full = jnp.zeros_like(q_local)

        def inputs(flag):
            if not mixed:
                return full[:4]
            pick = lambda a, b: jnp.where(flag, b, a)
            prefix = None if full[3] is None else (
                prefix_bias, None if q_local is None else pick(q_full, q_local))
            return pick(full[0], local[0]), pick(full[1], local[1]), pick(full[2], local[2]), prefix

        def body(carry, xs):
            x, rest, kv = carry
            p, flag, i, pre_kv = xs
            layer = nnx.merge(graphdef, p, rest)
            sin, cos, bias, prefix = inputs(flag)
            if prefix is not None:
                prefix = (*pre_kv, *prefix)
            layer_kv = None if kv is None else (kv[0][i], kv[1][i])
            out, new_kv = layer(x, sin, cos, bias, layer_kv, None if cache is None else cache.index, causal,
                                prefix, window, None if fused is None else (*fused, flag))
            if kv is not None:  # write back only the T new slots of this layer
                t = sin.shape[1]
                start = (i, 0, 0, cache.index, 0)
                new = [jax.lax.dynamic_slice_in_dim(a, cache.index, t, axis=2)[None] for a in new_kv]
                kv = tuple(with_logical_constraint(jax.lax.dynamic_update_slice(a, n.astype(a.dtype), start),
                                                   ("layers", "batch", "kv_heads", "length", "kv"))
                           for a, n in zip(kv, new))
            out = with_logical_constraint(out, ("batch", None))
            return (out, nnx.state(layer, nnx.Not(nnx.Param)), kv), None

        if remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
        kv = None if cache is None else (cache.keys, cache.values)
        pre_kv = None if full[3] is None else (cache.prefix_keys, cache.prefix_values)
        xs = (params, jnp.asarray(sliding), jnp.arange(cfg.num_layers), pre_kv)
        (x, rest, kv), _ = jax.lax.scan(body, (x, rest, kv), xs)
        nnx.update(self.layers, rest)
        if cache is not None:
            cache = cache._replace(keys=kv[0], values=kv[1])
        return x, cache


def scan_layers_of(model: Decoder) -> Decoder:
    """The model with its layers stacked (in place; returns it). A no-op on a scanned model."""
    if not model.scan_layers:
        model.layers = stack_layers(model.layers)
        model.scan_layers = True
    return model


def unscan_layers_of(model: Decoder) -> Decoder:
    """The model with its layers as a list again (in place; returns it). A no-op on an unscanned model."""
    if model.scan_layers:
        model.layers = nnx.List(unstack_layers(model.layers))
        model.scan_layers = False
    return model


def _layer_index(key) -> int | None:
    """A layer list's key in a state dict (0, or "0" once a checkpoint went through orbax), else None."""
    if isinstance(key, int):
        return key
    return int(key) if isinstance(key, str) and key.isdigit() else None


def scanned_state(state: dict) -> dict:
    """A (pure, nested dict) state of an unscanned Decoder in the scanned layout: `layers/<i>/...` leaves
    stacked into `layers/...` [L, ...]. Returned as is when it has no layer list (already scanned, or a
    state with no layers). The state may hold any subset of the model's variables (e.g. LoRA adapters)."""
    layers = state.get("layers") if isinstance(state, dict) else None
    if not isinstance(layers, dict) or not layers or any(_layer_index(k) is None for k in layers):
        return state
    ordered = [layers[k] for k in sorted(layers, key=_layer_index)]
    if [_layer_index(k) for k in sorted(layers, key=_layer_index)] != list(range(len(ordered))):
        raise ValueError(f"state layers {sorted(layers, key=_layer_index)} are not 0..{len(ordered) - 1}")
    structures = {jax.tree.structure(layer) for layer in ordered}
    if len(structures) != 1:
        raise ValueError("scanned_state: the layers differ in structure (LoRA adapters on some layers only?)")
    return {**state, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)}


def unscanned_state(state: dict) -> dict:
    """The inverse of scanned_state: `layers/...` [L, ...] split into `layers/<i>/...` (int keys)."""
    layers = state.get("layers") if isinstance(state, dict) else None
    if not isinstance(layers, dict) or not layers or all(_layer_index(k) is not None for k in layers):
        return state
    sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(layers)}
    if len(sizes) != 1:
        raise ValueError(f"unscanned_state: stacked layer leaves have leading sizes {sorted(sizes)}")
    return {**state, "layers": {i: jax.tree.map(lambda a: a[i], layers) for i in range(sizes.pop())}}


def create_model(cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0,
                 abstract: bool = False, scan_layers: bool = False, attention: str = "reference") -> Decoder:
    """A randomly initialised Decoder, or (abstract=True) one whose parameters are ShapeDtypeStructs,
    to be filled by a weight loader without allocating twice."""
    build = lambda: Decoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), scan_layers=scan_layers,
                            attention=attention)
    return nnx.eval_shape(build) if abstract else build()


def parse_dtype(name: str):
    """'float32' | 'bfloat16' | 'float16' -> jnp dtype, with a clear error."""
    table = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(table)}")
    return table[name]
