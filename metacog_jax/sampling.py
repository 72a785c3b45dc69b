"""Batched autoregressive sampling with a KV cache, compiled end to end.

One jitted function per (batch rows, prompt-length bucket, samples per prompt, max new tokens, filter
flags) runs the prefill once, repeats the cache for the K samples of each prompt, and decodes in a
`lax.while_loop` that stops early when every row has finished: no Python dispatch per token, no host
sync until the end. Prompts are left-padded to a length bucket and the batch padded to a fixed number
of rows, so a run compiles a handful of times, not once per batch.

Randomness is per prompt: each prompt has an integer seed (default: its index in the call), and the
key of sample k at step t is fold_in(fold_in(fold_in(key, seed), k), t). A prompt's samples therefore do
not depend on which other prompts share its batch, and a resumed run that passes the same seeds
(e.g. derived from question ids) draws the same samples.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metacog_jax import multihost
from metacog_jax.data.prompts import render_chat
from metacog_jax.models.decoder import Decoder, KVCache
from metacog_jax.models.tokenizer import stop_token_ids

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy. top_k 0 and top_p 1 disable those filters. Stop strings are matched on
    the decoded text (the text is cut before the first match); EOS / end-of-turn tokens always stop."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)
    greedy_first: bool = False  # sample 0 of each prompt is the greedy (temperature 0) answer

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.num_samples < 1:
            raise ValueError(f"top_k must be >= 0 and num_samples >= 1, got {self.top_k}, {self.num_samples}")


@dataclasses.dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # log p(token) under the model's untempered distribution
    finish_reason: str  # "stop" (EOS/end of turn), "stop_string" or "length"


@dataclasses.dataclass
class Generation:
    """completions[i][k] is sample k of prompt i."""

    completions: list[list[Completion]]

    @property
    def texts(self) -> list[list[str]]:
        return [[c.text for c in row] for row in self.completions]


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Mask logits [R, V] outside the top-k set and outside the smallest nucleus of mass >= top_p."""
    neg = jnp.finfo(logits.dtype).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p  # always keeps the most likely token
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, neg, logits)
    return logits


def sample_inverse_cdf(logits: jax.Array, keys: jax.Array) -> jax.Array:
    """One token per row of logits [R, V] drawn from softmax(logits), with one uniform per row (key [R])."""
    return sample_from_weights(jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)), keys)


CDF_BLOCK = 256


def sample_from_weights(weights: jax.Array, keys: jax.Array, block: int = CDF_BLOCK) -> jax.Array:
    """One index per row of non-negative weights [R, V] drawn with probability weights / sum, by inverting
    the cumulative distribution with one uniform per row (key [R]).

    Exact categorical sampling, several times cheaper on CPU than jax.random.categorical (which draws V
    Gumbel variates per row). Two levels: the cumulative sums of blocks of `block` weights locate the
    block holding the draw, then a cumulative sum inside that block alone locates the index, so only one
    pass over the V weights is made besides the sums.
    """
    r, v = weights.shape
    nb = -(-v // block)
    w = jnp.pad(weights, ((0, 0), (0, nb * block - v))).reshape(r, nb, block)
    block_sum = jnp.sum(w, axis=-1)  # [R, nb]
    block_cdf = jnp.cumsum(block_sum, axis=-1)
    u = jax.vmap(lambda k: jax.random.uniform(k, minval=1e-7))(keys) * block_cdf[:, -1]  # in (0, total]
    j = jnp.minimum(jnp.sum(block_cdf < u[:, None], axis=-1), nb - 1)  # first block whose cdf reaches u
    inside = jnp.take_along_axis(w, j[:, None, None], axis=1)[:, 0]  # [R, block]
    rest = u - (jnp.take_along_axis(block_cdf, j[:, None], axis=1)[:, 0]
                - jnp.take_along_axis(block_sum, j[:, None], axis=1)[:, 0])
    i = jnp.sum(jnp.cumsum(inside, axis=-1) < rest[:, None], axis=-1)
    # Rounding can leave `rest` a hair above the block's own sum: take its last positive weight then.
    last_positive = block - 1 - jnp.argmax((inside > 0)[:, ::-1], axis=-1)
    i = jnp.where(i >= block, last_positive, i)
    return jnp.minimum(j * block + i, v - 1)


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int):
    """tokens, segment ids (1 real, 0 pad), positions: int32 [rows, length]; prompts right-aligned."""
    tokens = np.full((rows, length), pad_id, np.int32)
    segments = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        tokens[i, length - len(p):] = p
        segments[i, length - len(p):] = 1
    segments[len(prompts):, -1] = 1  # filler rows hold one pad token so nothing is fully masked
    positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
    return tokens, segments, positions


def prefill(model: Decoder, tokens, segments, positions, samples: int, new_tokens: int):
    """The prompt half of generation: the prompts [B, P] through the model into a fresh KV cache, which the
    `samples` continuations of each prompt then share (stored and read once per prompt; each continuation
    row gets `new_tokens` slots of its own). Returns (logits at each prompt's last position [B, V], cache)."""
    b, p = tokens.shape
    cache = KVCache.init(model.config, b, p, model.dtype, stacked=model.scan_layers)
    hidden, cache = model(tokens, positions, segment_ids=segments, cache=cache, return_hidden=True)
    return model.logits(hidden[:, -1]), cache.share_prefix(samples, new_tokens)


def decode_step(model: Decoder, cache: KVCache, tokens, positions):
    """One token per row [R] at positions [R] against the cache: (next logits [R, V], the cache)."""
    hidden, cache = model(tokens[:, None], positions[:, None], cache=cache, return_hidden=True)
    return model.logits(hidden[:, -1]), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "params", "stop_ids", "pad_id"))
def _generate(graphdef, state, tokens, segments, positions, seeds, key, *, params: SamplingParams,
              stop_ids: tuple[int, ...], pad_id: int):
    """Prefill + decode. tokens/segments/positions [B, P]; seeds [B]. Returns token ids [B*K, N],
    log-probs [B*K, N] and the number of tokens generated per row [B*K] (up to and incl. a stop token)."""
    model = nnx.merge(graphdef, state)
    b = tokens.shape[0]
    k, n = params.num_samples, params.max_new_tokens
    logits, cache = prefill(model, tokens, segments, positions, k, n)
    logits = jnp.repeat(logits, k, axis=0)
    next_pos = jnp.repeat(positions[:, -1] + 1, k)
    sample_index = jnp.tile(jnp.arange(k), b)
    row_keys = jax.vmap(jax.random.fold_in)(
        jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.repeat(seeds, k)), sample_index)
    stop = jnp.asarray(stop_ids, jnp.int32)
    pad = jnp.int32(pad_id)

    plain = params.temperature == 1.0 and params.top_k == 0 and params.top_p == 1.0

    def choose(logits, step):
        # log p(token) under the untempered model, from one logsumexp (no [R, V] log-softmax kept).
        peak = jnp.max(logits, axis=-1, keepdims=True)
        unnormalized = jnp.exp(logits - peak)
        lse = peak[:, 0] + jnp.log(jnp.sum(unnormalized, axis=-1))
        greedy_tok = jnp.argmax(logits, axis=-1)
        if params.temperature == 0.0:
            tok = greedy_tok
        else:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
            if plain:  # temperature 1, no filter: the softmax weights are the ones just computed
                tok = sample_from_weights(unnormalized, keys)
            else:
                tok = sample_inverse_cdf(filter_logits(logits / params.temperature, params.top_k,
                                                       params.top_p), keys)
            if params.greedy_first:
                tok = jnp.where(sample_index == 0, greedy_tok, tok)
        tok = tok.astype(jnp.int32)
        return tok, jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0] - lse

    def cond(carry):
        step, _, _, _, _, _, done, _ = carry
        return (step < n) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, out_tok, out_lp, lengths, done, pos = carry
        tok, lp = choose(logits, step)
        tok = jnp.where(done, pad, tok)
        out_tok = out_tok.at[:, step].set(tok)
        out_lp = out_lp.at[:, step].set(jnp.where(done, 0.0, lp))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(tok, stop)
        logits, cache = decode_step(model, cache, tok, pos)
        return step + 1, cache, logits, out_tok, out_lp, lengths, done, pos + 1

    rows = b * k
    carry = (jnp.zeros((), jnp.int32), cache, logits, jnp.full((rows, n), pad, jnp.int32),
             jnp.zeros((rows, n), jnp.float32), jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool), next_pos)
    _, _, _, out_tok, out_lp, lengths, _, _ = jax.lax.while_loop(cond, body, carry)
    return out_tok, out_lp, lengths


def length_bucket(n: int, minimum: int = 16, per_octave: int = 2) -> int:
    """Smallest bucket >= max(n, minimum) on a ladder with `per_octave` evenly spaced steps per doubling.

    per_octave=2 (the default): 16, 24, 32, 48, 64, 96, 128, ...: at most a third of a row is padding and a
    run compiles once per step it meets. per_octave=4: ..., 128, 160, 192, 224, 256, 320, ...: at most a
    fifth is padding, for one-pass work (scoring) where padding costs as much as real tokens.
    """
    n = max(int(n), int(minimum), 1)
    if n <= 2:
        return n
    step = max((1 << ((n - 1).bit_length() - 1)) // per_octave, 1)
    return -(-n // step) * step


class Sampler:
    """Generate from a Decoder. `batch_size` is the number of prompts per compiled call (rows = batch_size
    x num_samples); prompts are sorted by length so each call pads little."""

    def __init__(self, model: Decoder, tokenizer, *, batch_size: int = 16, min_bucket: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.min_bucket = batch_size, min_bucket
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0])

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        text = render_chat(self.tokenizer, messages, add_generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, key: jax.Array,
                 seeds: Sequence[int] | None = None, progress: bool = False,
                 sort_window: int | None = None) -> Generation:
        """Sample `params.num_samples` completions for each prompt (token id lists).

        Prompts are sorted by length within consecutive windows of `sort_window` prompts (None: all of
        them) and batched `batch_size` at a time. With several processes (``metacog_jax.multihost``) every
        process passes the same prompts: batch b is run by process b % process_count when each holds the
        whole model, or by all together over their global mesh; every process returns every completion.
        """
        if seeds is None:
            seeds = list(range(len(prompts)))
        if len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        stop_ids = () if params.ignore_eos else (
            tuple(self.stop_ids) + tuple(self._single_token_stops(params.stop_strings)))
        graphdef, state = nnx.split(self.model)
        mesh = multihost.spanning_mesh(state)
        window = sort_window or max(len(prompts), 1)
        order = [i for w in range(0, len(prompts), window)
                 for i in sorted(range(w, min(w + window, len(prompts))), key=lambda i: len(prompts[i]))]
        batches = [order[start:start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if mesh is not None:  # every process runs every batch; the key is placed like the other inputs
            key = key if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.key_data(key)
            key = multihost.place([np.asarray(key)], mesh)[0]
        divide = mesh is None and multihost.divided()

        def run_batches() -> dict[int, list[Completion]]:
            results: dict[int, list[Completion]] = {}
            t0, done_tokens = time.perf_counter(), 0
            for b, idx in enumerate(batches):
                if divide and not multihost.owns(b):
                    continue
                chunk = [list(prompts[i]) for i in idx]
                p = length_bucket(max(map(len, chunk)), self.min_bucket)
                tokens, segments, positions = left_pad(chunk, p, self.batch_size, self.pad_id)
                chunk_seeds = np.zeros((self.batch_size,), np.uint32)
                chunk_seeds[:len(idx)] = np.asarray([seeds[i] for i in idx], np.int64) % (2 ** 32)
                inputs = (tokens, segments, positions, chunk_seeds)
                if mesh is not None:
                    inputs = multihost.place(inputs, mesh)
                out = _generate(graphdef, state, *inputs, key, params=params, stop_ids=stop_ids, pad_id=self.pad_id)
                out_tok, out_lp, lengths = (multihost.to_host(x) for x in out)
                k = params.num_samples
                for j, i in enumerate(idx):
                    results[i] = [self._completion(out_tok[j * k + s], out_lp[j * k + s], int(lengths[j * k + s]),
                                                   params) for s in range(k)]
                    done_tokens += int(lengths[j * k:(j + 1) * k].sum())
                if progress:
                    rate = done_tokens / max(time.perf_counter() - t0, 1e-9)
                    log.info("generated %d/%d prompts, %.1f tokens/s", len(results), len(prompts), rate)
            return results

        results = multihost.merge_shares(run_batches) if divide else run_batches()
        return Generation([results[i] for i in range(len(prompts))])

    def _single_token_stops(self, stop_strings):
        vocab = self.tokenizer.get_vocab()
        return [vocab[s] for s in stop_strings if s in vocab]

    def _completion(self, tok, lp, length, params) -> Completion:
        ids, lps = [int(t) for t in tok[:length]], [float(x) for x in lp[:length]]
        reason = "length"
        if ids and ids[-1] in self.stop_ids and not params.ignore_eos:
            ids, lps, reason = ids[:-1], lps[:-1], "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        cut = _first_stop(text, params.stop_strings)
        if cut is not None:
            # Keep the shortest token prefix whose text reaches the stop string.
            lo, hi = 1, len(ids)
            while lo < hi:
                mid = (lo + hi) // 2
                if _first_stop(self.tokenizer.decode(ids[:mid], skip_special_tokens=False),
                               params.stop_strings) is not None:
                    hi = mid
                else:
                    lo = mid + 1
            ids, lps, text, reason = ids[:lo], lps[:lo], text[:cut], "stop_string"
        return Completion(text, ids, lps, reason)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
