"""Confidence scoring: read the model's whole distribution over confidence labels in one forward pass.

A confidence label is a *token sequence* (SmolLM2 writes " 0.85" as 'Ġ','0','.','8','5'), so its
probability is a product of next-token probabilities. Instead of one forward pass per label, the labels
of a scale are packed as a token trie after the prompt prefix and read in a single pass:

    sequence  = prefix tokens (P) + one token per internal trie node (M)
    node      = a proper non-empty prefix of some label sequence; its token is that prefix's last token
    position  = P + depth(node) - 1          (where the token would sit in a plain causal sequence)
    attention = each trie token sees the whole prefix and its own ancestors (and itself), nothing else

so the hidden state at every node is exactly the one a causal pass over ``prefix + node tokens`` gives.
Then log P(label) = sum_s log_softmax(logits at the node of label[:s])[label[s]], the first token being
read at the last prefix position, and the distribution is renormalized over the label set.

The readout is exact only when no label sequence is a proper prefix of another (" 1" and " 10" on the
0-100 scale: P(" 1") would include P(" 10")). Then every label gets the token that follows it in the
training format (the first end-of-turn token) appended, so P(label) = P(label, then stop).
:func:`score_labels` refuses prefix-ambiguous label sets.

Batches are right-padded to a power-of-two length bucket and a fixed number of rows, so a run compiles
once per bucket; the model is split into (graphdef, state) and the state passed as an argument. The
[B, T, T] attention mask and positions are built inside the compiled function from the prefix lengths.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metacog_jax import multihost
from metacog_jax.data import prompts
from metacog_jax.data.pairs import CHOICE_LABELS
from metacog_jax.data.prompts import ConfidenceScale, TemplateError
from metacog_jax.data.records import Question
from metacog_jax.sampling import Sampler, SamplingParams, length_bucket

log = logging.getLogger(__name__)

# Row lengths are rounded up on a quarter-octave ladder (at most a fifth padding): each padded slot costs a
# full forward position in one-pass scoring, so a finer ladder than the sampler's pays for its extra compiles.
BUCKETS_PER_OCTAVE = 4


# -- label sets -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabelSet:
    """Labels (texts) and the token ids the scorer chains for each.

    ``token_ids[i]`` is label i's tokens plus, when ``terminator`` is set, that terminator token.
    """

    labels: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    terminator: int | None = None


def _check_distinct(labels: Sequence[str], ids: Sequence[Sequence[int]], what: str) -> None:
    seen: dict[tuple[int, ...], str] = {}
    for label, seq in zip(labels, ids):
        seq = tuple(seq)
        if not seq:
            raise ValueError(f"{what}: label {label!r} tokenizes to no tokens")
        if seq in seen:
            raise ValueError(f"{what}: labels {seen[seq]!r} and {label!r} tokenize to the same ids {list(seq)}")
        seen[seq] = label


def _has_prefix_relation(ids: Sequence[Sequence[int]]) -> bool:
    seqs = {tuple(s) for s in ids}
    return any(s[:k] in seqs for s in seqs for k in range(1, len(s)))


def checked_labels(tokenizer, labels: Sequence[str], context: str, sep: str, follow_text: str,
                   what: str) -> LabelSet:
    """Tokenize labels as the training batches do, checking them (prompts.label_token_ids), and make them
    prefix-free by appending the first token of `follow_text` (the text that follows a label in the
    training format) to every label when one label's tokens are a proper prefix of another's.

    Raises:
      ValueError: naming `what`, when a label does not tokenize on its own after `context`, two labels
        share a token sequence, or the set is ambiguous and `follow_text` has no tokens.
    """
    try:
        ids = prompts.label_token_ids(tokenizer, labels, context, sep=sep)
    except TemplateError as e:
        raise ValueError(f"{what}: labels cannot be scored with this tokenizer: {e}") from e
    _check_distinct(labels, ids, what)
    if not _has_prefix_relation(ids):
        return LabelSet(tuple(labels), tuple(tuple(s) for s in ids))
    follow = tokenizer.encode(follow_text, add_special_tokens=False) if follow_text else []
    if not follow:
        raise ValueError(f"{what}: some labels' tokens are a proper prefix of others' and no terminator token "
                         "is available to tell them apart")
    return LabelSet(tuple(labels), tuple(tuple(s) + (follow[0],) for s in ids), terminator=int(follow[0]))


def confidence_label_set(tokenizer, scale: ConfidenceScale | str) -> LabelSet:
    """The checked token sequences of a confidence scale's labels (start-up check, METHOD.md)."""
    scale = _as_scale(scale)
    return checked_labels(tokenizer, list(scale.labels), prompts.CONFIDENCE_PREFIX, " ",
                          prompts.end_of_turn(tokenizer), f"confidence scale {scale.name!r}")


def pair_label_set(tokenizer) -> LabelSet:
    """The checked token sequences of "Q1" / "Q2", written directly after the assistant header."""
    header = prompts.prompt_text(tokenizer, "Which question?")
    return checked_labels(tokenizer, CHOICE_LABELS, header, "", "\nQ1: The answer is ",
                          "pairwise labels")


def _as_scale(scale: ConfidenceScale | str) -> ConfidenceScale:
    return prompts.confidence_scale(scale) if isinstance(scale, str) else scale


# -- the trie -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LabelTrie:
    """Label token sequences packed as a trie of their proper non-empty prefixes (the internal nodes).

    M internal nodes (at least 1: a dummy node when every label is one token), L labels, S = longest label:
      node_tokens [M] int32: the last token of each node's prefix (what is fed at that node);
      node_depth [M] int32: the prefix length (1-based), so the node's position is P + depth - 1;
      ancestor [M, M] bool: [j, k] is True when node k is node j or one of its ancestors;
      read_row [L, S] int32: the row whose logits give label token s: 0 = last prefix token, 1 + j = node j;
      label_tokens [L, S] int32 and label_valid [L, S] bool (labels shorter than S are padded).
    """

    node_tokens: np.ndarray
    node_depth: np.ndarray
    ancestor: np.ndarray
    read_row: np.ndarray
    label_tokens: np.ndarray
    label_valid: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_tokens)


def build_trie(label_ids: Sequence[Sequence[int]], pad_id: int = 0) -> LabelTrie:
    """Pack label token sequences into a :class:`LabelTrie` (nodes in insertion order, parents first)."""
    if not label_ids:
        raise ValueError("label set is empty")
    index: dict[tuple[int, ...], int] = {}
    for seq in label_ids:
        for s in range(1, len(seq)):
            index.setdefault(tuple(seq[:s]), len(index))
    prefixes = list(index) or [(pad_id,)]  # dummy node keeps shapes non-empty; it is never read
    m, n_labels, width = len(prefixes), len(label_ids), max(len(s) for s in label_ids)
    node_tokens = np.asarray([p[-1] for p in prefixes], np.int32)
    node_depth = np.asarray([len(p) for p in prefixes], np.int32)
    ancestor = np.zeros((m, m), bool)
    for j, p in enumerate(prefixes):
        for d in range(1, len(p) + 1):
            if p[:d] in index:
                ancestor[j, index[p[:d]]] = True
    ancestor[np.arange(m), np.arange(m)] = True
    read_row = np.zeros((n_labels, width), np.int32)
    label_tokens = np.zeros((n_labels, width), np.int32)
    label_valid = np.zeros((n_labels, width), bool)
    for i, seq in enumerate(label_ids):
        for s, tok in enumerate(seq):
            read_row[i, s] = 0 if s == 0 else 1 + index[tuple(seq[:s])]
            label_tokens[i, s] = tok
            label_valid[i, s] = True
    return LabelTrie(node_tokens, node_depth, ancestor, read_row, label_tokens, label_valid)


def trie_attention(prefix_len: jax.Array, node_depth: jax.Array, ancestor: jax.Array,
                   length: int) -> tuple[jax.Array, jax.Array]:
    """Attention mask [B, T, T] bool and positions [B, T] int32 for right-padded rows laid out as
    ``prefix (P_b) + trie nodes (M) + padding``.

    Prefix tokens are causal among themselves; trie node j sees the whole prefix and the nodes k with
    ``ancestor[j, k]``; padding tokens see only themselves (no fully masked row, so no NaN).
    """
    m = node_depth.shape[0]
    idx = jnp.arange(length)[None, :]  # [1, T]
    p = prefix_len[:, None]  # [B, 1]
    node = idx - p  # [B, T]: trie node index of each slot (outside [0, M) for prefix/padding)
    in_prefix = idx < p
    in_trie = (node >= 0) & (node < m)
    node_c = jnp.clip(node, 0, m - 1)
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]  # [T, T]
    prefix_rows = in_prefix[:, :, None] & in_prefix[:, None, :] & causal[None]
    trie_links = ancestor[node_c[:, :, None], node_c[:, None, :]]  # [B, T, T]
    trie_rows = in_trie[:, :, None] & (in_prefix[:, None, :] | (in_trie[:, None, :] & trie_links))
    pad_rows = ~(in_prefix | in_trie)[:, :, None] & jnp.eye(length, dtype=bool)[None]
    positions = jnp.where(in_prefix, idx, jnp.where(in_trie, p + node_depth[node_c] - 1, 0))
    return prefix_rows | trie_rows | pad_rows, positions.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _label_logprobs(graphdef, state, tokens, prefix_len, node_depth, ancestor, read_row, label_tokens,
                    label_valid):
    """tokens [B, T], prefix_len [B] -> unnormalized log P(label | prefix) [B, L] (float32)."""
    model = nnx.merge(graphdef, state)
    _, t = tokens.shape
    m = node_depth.shape[0]
    mask, positions = trie_attention(prefix_len, node_depth, ancestor, t)
    # The trie mask is lower-triangular (prefix causal, nodes after their ancestors, padding on itself).
    hidden, _ = model(tokens, positions, attention_mask=mask, mask_is_causal=True, return_hidden=True)
    # Rows P-1 (last prefix token) .. P+M-1 (last node) are contiguous: gather them, then project to the
    # vocabulary only there (never [B, T, V]).
    rows = prefix_len[:, None] - 1 + jnp.arange(m + 1)[None, :]
    picked = jnp.take_along_axis(hidden, rows[:, :, None], axis=1)  # [B, M+1, D]
    logp = jax.nn.log_softmax(model.logits(picked), axis=-1)  # [B, M+1, V]
    token_lp = logp[:, read_row, label_tokens]  # [B, L, S]
    return jnp.sum(jnp.where(label_valid[None], token_lp, 0.0), axis=-1)


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


def label_logprobs(model, prefixes: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]], *,
                   batch_size: int = 16, pad_id: int = 0, mesh: jax.sharding.Mesh | None = None,
                   min_bucket: int = 16, progress: bool = False) -> np.ndarray:
    """Exact log P(label | prefix) for every prefix and label, one forward pass per batch.

    Args:
      model: a Decoder.
      prefixes: N token id lists, each ending where the label would start.
      label_ids: L token id lists, none a proper prefix of another (append a terminator token otherwise).
      batch_size: rows per compiled call (the last batch is padded with filler rows).
      pad_id: token used for padding.
      mesh: optional mesh; batches are then placed sharded over its ``data`` x ``fsdp`` axes
        (batch_size must divide evenly by that and by the process count). Every process passes the same
        prefixes (same program on every host); results are gathered to each host. The model's state
        keeps whatever sharding it has. Without a mesh, a model sharded over several processes is run
        the same way over its own mesh; with local replicas on several processes, batch b is run by
        process b % process_count alone and the rows are gathered (``metacog_jax.multihost``).
      min_bucket: smallest padded length; lengths are powers of two above it.
      progress: log a line with the rate after each batch.

    Returns:
      float64 [N, L] log-probabilities, not renormalized.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_distinct([str(list(s)) for s in label_ids], label_ids, "label_ids")
    if _has_prefix_relation(label_ids):
        raise ValueError("label_ids: a label's tokens are a proper prefix of another's, so chained "
                         "probabilities would overlap; append a terminator token (see checked_labels)")
    for i, p in enumerate(prefixes):
        if len(p) == 0:
            raise ValueError(f"prefixes[{i}] is empty; the first label token needs a preceding position")
    trie = build_trie(label_ids, pad_id)
    m = trie.num_nodes
    consts = tuple(jnp.asarray(a) for a in (trie.node_depth, trie.ancestor, trie.read_row, trie.label_tokens,
                                            trie.label_valid))
    if mesh is not None:
        from metacog_jax.sharding import check_batch_divisible

        check_batch_divisible(batch_size, mesh)
    graphdef, state = nnx.split(model)
    # A model sharded over processes: every process runs every batch (rows over its data x fsdp axes).
    placed_on = mesh if mesh is not None else multihost.spanning_mesh(state)
    divide = placed_on is None and multihost.divided()  # local replicas: batch b on process b % count
    if placed_on is not None:  # the trie's arrays too, whole on every device of the mesh
        consts = tuple(multihost.place([np.asarray(a) for a in consts], placed_on, rows=False))
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def run_batches() -> dict[int, np.ndarray]:
        rows: dict[int, np.ndarray] = {}
        t0 = time.perf_counter()
        for b, idx in enumerate(batches):
            if divide and not multihost.owns(b):
                continue
            length = length_bucket(max(len(prefixes[i]) for i in idx) + m, min_bucket,
                                   per_octave=BUCKETS_PER_OCTAVE)
            tokens = np.full((batch_size, length), pad_id, np.int32)
            prefix_len = np.ones((batch_size,), np.int32)  # filler rows: a one-token prefix of padding
            for r, i in enumerate(idx):
                p = len(prefixes[i])
                tokens[r, :p] = prefixes[i]
                prefix_len[r] = p
            for r in range(batch_size):
                tokens[r, prefix_len[r]:prefix_len[r] + m] = trie.node_tokens
            tok_arg, len_arg = multihost.place((tokens, prefix_len), placed_on) if placed_on is not None \
                else (tokens, prefix_len)
            lp = multihost.to_host(_label_logprobs(graphdef, state, tok_arg, len_arg, *consts))
            rows.update(zip(idx, lp[:len(idx)]))
            if progress:
                done = sum(len(batches[j]) for j in range(b + 1) if not divide or multihost.owns(j))
                total = sum(len(batches[j]) for j in range(len(batches)) if not divide or multihost.owns(j))
                rate = done / max(time.perf_counter() - t0, 1e-9)
                log.info("scored %d/%d prefixes (%.1f/s, ETA %.0fs)", done, total, rate,
                         (total - done) / max(rate, 1e-9))
        return rows

    out = np.zeros((len(prefixes), len(label_ids)), np.float64)
    for i, row in (multihost.merge_shares(run_batches) if divide else run_batches()).items():
        out[i] = row
    return out


def _renormalize(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise softmax over labels and the total (unnormalized) label mass."""
    top = logp.max(axis=1, keepdims=True)
    w = np.exp(logp - top)
    total = w.sum(axis=1, keepdims=True)
    return w / total, np.exp(top[:, 0]) * total[:, 0]


def score_labels(model, tokenizer, prefixes: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]],
                 batch_size: int = 16, *, mesh: jax.sharding.Mesh | None = None, return_mass: bool = False,
                 progress: bool = False):
    """Distribution over a label set at the end of each prefix, renormalized over the labels.

    Args:
      model: a Decoder; tokenizer: gives the padding id.
      prefixes: N token id lists (up to the label slot).
      label_ids: L label token sequences, prefix-free (see :func:`checked_labels`).
      batch_size, mesh, progress: as in :func:`label_logprobs`.
      return_mass: also return the probability mass the labels had before renormalizing.

    Returns:
      float64 [N, L] probabilities (rows sum to 1), or (probabilities, mass [N]) with return_mass.
    """
    logp = label_logprobs(model, prefixes, label_ids, batch_size=batch_size, pad_id=_pad_id(tokenizer),
                          mesh=mesh, progress=progress)
    probs, mass = _renormalize(logp)
    return (probs, mass) if return_mass else probs


# -- the two tasks --------------------------------------------------------------------------------------
def single_prefix(tokenizer, question: Question, answer: str | None, scale: ConfidenceScale | str) -> list[int]:
    """Token ids of the single-question example up to the confidence slot (training tokenization)."""
    ex = prompts.single_example(tokenizer, question, answer, None, _as_scale(scale))
    return prompts.tokenize_segments(tokenizer, ex.segments)[0]


def pairwise_prefix(tokenizer, q1: Question, q2: Question) -> list[int]:
    """Token ids of the pairwise example up to the Q1/Q2 choice slot (the assistant header)."""
    ex = prompts.pairwise_example(tokenizer, q1, q2, None)
    return prompts.tokenize_segments(tokenizer, ex.segments)[0]


def score_single(model, tokenizer, questions: Sequence[Question], answers: Sequence[str | None],
                 scale: ConfidenceScale | str, batch_size: int = 16, *, mesh: jax.sharding.Mesh | None = None,
                 progress: bool = False) -> list[dict[str, Any]]:
    """Confidence distribution of the single-question task for (question, answer) items.

    Args:
      questions: N questions; answers: N normalized answers (None = unparseable, shown as "unknown").
      scale: a ConfidenceScale or its name ("0-1", "0-100", "0-10", "0-9").

    Returns:
      N dicts: ``distribution`` float64 [L] over ``scale.labels`` (sums to 1), ``expected`` =
      sum_k p_k v_k in [0, 1], ``argmax_label``, ``argmax_value``, ``label_mass`` (probability the labels
      had before renormalizing) and ``prompt_tokens`` (prefix length).
    """
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    scale = _as_scale(scale)
    labels = confidence_label_set(tokenizer, scale)
    prefixes = [single_prefix(tokenizer, q, a, scale) for q, a in zip(questions, answers)]
    probs, mass = score_labels(model, tokenizer, prefixes, labels.token_ids, batch_size, mesh=mesh,
                               return_mass=True, progress=progress)
    values = np.asarray(scale.values, np.float64)
    out = []
    for row, m, prefix in zip(probs, mass, prefixes):
        k = int(np.argmax(row))
        out.append(dict(distribution=row, expected=float(np.clip(row @ values, 0.0, 1.0)),
                        argmax_label=scale.labels[k], argmax_value=float(values[k]), label_mass=float(m),
                        prompt_tokens=len(prefix)))
    return out


def score_pairwise(model, tokenizer, pairs: Sequence[tuple[Question, Question]], batch_size: int = 16, *,
                   mesh: jax.sharding.Mesh | None = None, return_mass: bool = False, progress: bool = False):
    """P("Q1") renormalized over {"Q1", "Q2"} at the choice slot, for pairs shown as (Q1, Q2).

    Returns:
      float64 [P] p_q1, or (p_q1, label mass [P]) with return_mass.
    """
    labels = pair_label_set(tokenizer)
    prefixes = [pairwise_prefix(tokenizer, q1, q2) for q1, q2 in pairs]
    probs, mass = score_labels(model, tokenizer, prefixes, labels.token_ids, batch_size, mesh=mesh,
                               return_mass=True, progress=progress)
    return (probs[:, 0], mass) if return_mass else probs[:, 0]


# -- verbalized readout ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Verbalized:
    """Greedy generations and what was parsed from them; ``values[i]`` is None where parsing failed."""

    values: list[float | None]
    texts: list[str]

    @property
    def n_failures(self) -> int:
        return sum(v is None for v in self.values)


_NUMBER = re.compile(r"(?:confidence(?:\s+score)?\s*(?:is|of|:|=)?\s*)?(-?\d+(?:\.\d+)?)\s*(%|/\s*\d+)?",
                     re.IGNORECASE)


def parse_confidence(text: str, scale: ConfidenceScale | str) -> float | None:
    """The confidence in [0, 1] stated at the start of `text` (what follows "my confidence score is").

    A label of the scale maps to its value ("7" on 0-9 -> 0.75); another number is read on the scale's
    range (x / top label, "85%" -> 0.85, "7/10" -> 0.7). None when no number comes first or it is out of
    range.
    """
    scale = _as_scale(scale)
    match = _NUMBER.match(text.strip())
    if match is None:
        return None
    number, suffix = match.group(1), (match.group(2) or "").replace(" ", "")
    if not suffix:
        exact = scale.value_of(number)
        if exact is not None:
            return exact
        x, top = float(number), float(scale.labels[-1])
        return x / top if 0.0 <= x <= top else None
    x = float(number)
    denom = 100.0 if suffix == "%" else float(suffix[1:])
    return x / denom if denom > 0 and 0.0 <= x <= denom else None


def parse_choice(text: str) -> float | None:
    """1.0 if the first of "Q1"/"Q2" in `text` is Q1, 0.0 if Q2, None if neither appears."""
    match = re.search(r"Q\s*([12])", text)
    return None if match is None else (1.0 if match.group(1) == "1" else 0.0)


def verbalized_single(sampler: Sampler, questions: Sequence[Question], answers: Sequence[str | None],
                      scale: ConfidenceScale | str, max_new_tokens: int = 8) -> Verbalized:
    """Greedy verbalized confidence, generated from the single prompt **prefix up to the slot**.

    The model continues "The answer is {answer} and my confidence score is", so the stated number is about
    the same answer the logit readout scores (not one the model would pick itself).
    """
    scale = _as_scale(scale)
    prefixes = [single_prefix(sampler.tokenizer, q, a, scale) for q, a in zip(questions, answers)]
    texts = sampler.generate(prefixes, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                             jax.random.key(0)).texts
    texts = [row[0] for row in texts]
    return Verbalized([parse_confidence(t, scale) for t in texts], texts)


def verbalized_pairwise(sampler: Sampler, pairs: Sequence[tuple[Question, Question]],
                        max_new_tokens: int = 4) -> Verbalized:
    """Greedy verbalized choice from the pairwise prompt (assistant header): 1.0 = Q1, 0.0 = Q2."""
    prefixes = [pairwise_prefix(sampler.tokenizer, q1, q2) for q1, q2 in pairs]
    texts = sampler.generate(prefixes, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                             jax.random.key(0)).texts
    texts = [row[0] for row in texts]
    return Verbalized([parse_choice(t) for t in texts], texts)
