"""Fused attention for training and one-pass scoring on accelerators (config `model.attention`).

The decoder's own attention (`reference`) materializes each block's [B, K, G, T, S] float32 scores: fine on
a CPU, but on a TPU or GPU that traffic bounds the step. For causal self-attention over packed rows (the
train step; any forward without a KV cache or a tree mask) the decoder can instead call:

* `splash` (TPU): the Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  with a causal or local (sliding-window) mask and the rows' segment ids; under a mesh it runs per shard
  (`jax.shard_map`: rows over the batch axes, heads over `tensor`). Off a TPU it runs in Pallas interpret
  mode, which is how the tests check it against the reference on a CPU.
* `cudnn` (GPU): `jax.nn.dot_product_attention` with its cuDNN implementation (`implementation="xla"`
  is the same call on a CPU, which the tests check). cuDNN's kernel takes bfloat16/float16 only: a model
  computing in float32 keeps the reference attention.
* `auto` (default): `splash` on TPU, `cudnn` on GPU, `reference` elsewhere, decided from the devices the
  model is built for (`resolve`).

The KV-cache paths (prefill, decode, shared prefixes) and tree masks keep the reference attention.
Semantics are the reference's for every real token: a query attends to earlier slots of its own segment
(and within the window); padding (segment 0) queries may differ, their outputs are never used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "reference", "splash", "cudnn")
# Splash's query/key block: the largest of these dividing the row length (a row length that none divides
# falls back to the reference attention, which the decoder does by itself).
SPLASH_BLOCKS = (512, 256, 128)


def resolve(implementation: str, platform: str) -> str:
    """What the decoder runs for config `implementation` on devices of `platform` ("tpu", "gpu", "cpu"):
    `auto` picks by platform; `splash` off a TPU becomes `splash_interpret` (the Pallas interpreter: exact,
    slow; for checks on a CPU); `cudnn` off a GPU becomes `xla` (the same jax.nn call, XLA's kernels)."""
    if implementation not in IMPLEMENTATIONS + ("splash_interpret", "xla"):
        raise ValueError(f"config model.attention={implementation!r}; choose one of {', '.join(IMPLEMENTATIONS)}")
    gpu = platform in ("gpu", "cuda", "rocm")
    if implementation == "auto":
        return "splash" if platform == "tpu" else "cudnn" if gpu else "reference"
    if implementation == "splash" and platform != "tpu":
        return "splash_interpret"
    if implementation == "cudnn" and not gpu:
        return "xla"
    return implementation


def splash_block(length: int) -> int:
    return next((b for b in SPLASH_BLOCKS if length % b == 0), 0)


# cuDNN's fused attention takes half-precision queries, keys and values only (jax raises on float32).
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def supports(implementation: str, length: int, dtype=None) -> bool:
    """Whether `implementation` can run rows of `length` tokens computed in `dtype` (None: any); else the
    decoder uses the reference (a float32 model on a GPU keeps it: cuDNN's kernel is bfloat16/float16)."""
    if implementation in ("splash", "splash_interpret"):
        return splash_block(length) > 0
    if implementation == "cudnn":
        return dtype is None or jnp.dtype(dtype) in CUDNN_DTYPES
    return implementation == "xla"


def _splash_kernel(length: int, heads: int, window: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (length, length)
    mask = sm.LocalMask(shape, window_size=(window - 1, 0), offset=0) if window else sm.CausalMask(shape)
    b = splash_block(length)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _mesh_axes():
    """(batch mesh axes, tensor axis or None) of the mesh in context (sharding.activation_context), or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    sizes = dict(mesh.shape)
    batch = tuple(a for a in ("data", "fsdp") if sizes.get(a, 1) > 1)
    return mesh, batch, ("tensor" if sizes.get("tensor", 1) > 1 else None), sizes


def _per_shard(fn, q, k, v, segment_ids):
    """fn(q, k, v, segment_ids) on each shard: rows over the batch axes, heads over `tensor` (key/value heads
    repeated to the query heads when `tensor` does not divide them). Without a mesh: fn itself."""
    axes = _mesh_axes()
    if axes is None:
        return fn(q, k, v, segment_ids)
    mesh, batch, tensor, sizes = axes
    n, kv = q.shape[1], k.shape[1]
    rows = batch if batch and q.shape[0] % int(np.prod([sizes[a] for a in batch])) == 0 else ()
    heads = tensor if tensor and n % sizes[tensor] == 0 else None
    if heads and kv % sizes[tensor]:
        k, v = jnp.repeat(k, n // kv, axis=1), jnp.repeat(v, n // kv, axis=1)
    P = jax.sharding.PartitionSpec
    row = rows or None
    spec = P(row, heads, None, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, P(row, None)), out_specs=spec,
                         check_vma=False)(q, k, v, segment_ids)


def splash_attention(q, k, v, segment_ids, window: int = 0, interpret: bool = False):
    """Causal (or, with window > 0, local: the `window` slots ending at the query's) attention within
    segments. q [B, N, T, H] pre-scaled, k/v [B, K, T, H], segment_ids [B, T] -> [B, N, T, H]."""

    def run(q, k, v, seg):
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        kernel = _splash_kernel(q.shape[2], q.shape[1], int(window), bool(interpret))
        one = lambda q, k, v, s: kernel(q, k, v, segment_ids=sk.SegmentIds(q=s, kv=s))
        return jax.vmap(one)(q, k, v, seg)

    return _per_shard(run, q, k, v, segment_ids.astype(jnp.int32))


def cudnn_attention(q, k, v, segment_ids, window: int = 0, implementation: str = "cudnn"):
    """The same function through jax.nn.dot_product_attention (cuDNN on a GPU; `implementation="xla"` for
    the CPU check). q [B, N, T, H] pre-scaled, k/v [B, K, T, H], segment_ids [B, T] -> [B, N, T, H]."""
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    out = jax.nn.dot_product_attention(
        q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask=same[:, None],
        scale=1.0, is_causal=True, local_window_size=(window - 1, 0) if window else None,
        implementation=None if implementation == "xla" else implementation)
    return out.transpose(0, 2, 1, 3)


def fused_attention(implementation: str, q, k, v, segment_ids, window: int = 0):
    if implementation in ("splash", "splash_interpret"):
        return splash_attention(q, k, v, segment_ids, window, interpret=implementation == "splash_interpret")
    if implementation in ("cudnn", "xla"):
        return cudnn_attention(q, k, v, segment_ids, window, implementation)
    raise ValueError(f"no fused attention {implementation!r}")
