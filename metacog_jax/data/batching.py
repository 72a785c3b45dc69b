"""Training batches: target records -> tokenized, loss-weighted, packed (or bucket-padded), task-mixed arrays.

Encoding
    :func:`encode_single` / :func:`encode_pairwise` render an example with ``prompts.single_example`` /
    ``prompts.pairwise_example`` and tokenize it segment by segment (``prompts.tokenize_segments``), so the
    role of every token is known: prompt tokens are never targets; completion tokens (format, answer,
    confidence, choice, end of turn) are, each role with its own weight (:class:`LossWeights`).

    The *decision token* of a single example is the one token position where the confidence scale's
    labels differ (the digit of " 7" on scale "0-9"); its index lets a Brier loss read the model's
    distribution over the labels there. Scales whose labels differ in length or in more than one token
    position have no decision token (``decision_index = -1``; the Brier loss is unavailable for them).
    For pairwise examples the decision token is the token where "Q1" and "Q2" differ.

Batches (numpy, fixed shapes; every array [B, T])
    tokens int32, positions int32 (restart at 0 per example), segment_ids int32 (1, 2, ... per example in
    a row, 0 = padding), targets int32 (next token: targets[t] = tokens[t + 1] inside one example, 0
    elsewhere), loss_weights float32 (weight of predicting targets[t]: role weight of the target token x
    task weight; 0 on prompt and padding), loss_mask float32 (loss_weights > 0), task_ids int32 (0 none,
    1 single, 2 pairwise, 3 replay; on every position with a target), decision_mask float32 (1 where
    targets[t] is a single example's decision token), decision_value float32 (the target probability y
    there).

    Pairwise choice positions are deliberately not in decision_mask: the Brier loss in train/losses.py
    reads the confidence scale's label tokens at every masked position.

Order and resumability
    The example stream is an exact interleave of the two tasks (position j is pairwise iff
    floor((j+1)·mix) > floor(j·mix)) and, when ``replay_share`` > 0, of replay examples (the base model's
    own answer-prompt completions, interleaved the same way before the tasks), each task drawn from its own
    endless stream of indices, reshuffled every epoch from (seed, epoch) (:class:`EpochShuffle`: random access like grain's
    ``MapDataset.shuffle().repeat()``, but vectorized). Packing fills rows of ``max_len`` tokens first-fit
    (longest first) within fixed windows of the stream, so a row's contents depend only on its window,
    and the global row index of every window is found from the windows' row counts. Hence the batch of
    step i is a pure function of (data, options, seed, i): a trainer resumes at step i with no iterator
    state. Each of ``shard_count`` processes takes its contiguous ``B / shard_count`` rows of the global
    batch.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import random
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from metacog_jax.data import prompts, splits
from metacog_jax.data.pairs import CHOICE_LABELS
from metacog_jax.data.prompts import ANSWER, CHOICE, CONFIDENCE, FORMAT, PROMPT, REPLAY, ConfidenceScale
from metacog_jax.data.records import Question

TASK_IDS = {"single": 1, "pairwise": 2, "replay": 3}
TASKS = ("single", "pairwise", "replay")
BATCH_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_weights", "loss_mask", "task_ids",
              "decision_mask", "decision_value")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Per-token loss weights: role weight of the target token x task weight. Prompt tokens always weigh 0."""

    w_format: float = 1.0
    w_answer: float = 1.0
    w_confidence: float = 1.0
    w_choice: float = 1.0
    w_single: float = 1.0
    w_pairwise: float = 1.0
    w_replay: float = 1.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"LossWeights.{f.name} must be >= 0, got {getattr(self, f.name)}")

    def role(self, role: str) -> float:
        """Weight of a target token with this role (before the task weight)."""
        return {PROMPT: 0.0, FORMAT: self.w_format, ANSWER: self.w_answer, CONFIDENCE: self.w_confidence,
                CHOICE: self.w_choice, REPLAY: 1.0}[role]

    def task(self, task: str) -> float:
        """Weight of every token of a ``"single"``, ``"pairwise"`` or ``"replay"`` example (multiplies the role
        weight; a replay completion's tokens have role weight 1, so ``w_replay`` alone sets their weight)."""
        return {"single": self.w_single, "pairwise": self.w_pairwise, "replay": self.w_replay}[task]


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One tokenized example.

    Attributes:
      ids: token ids, prompt + completion.
      roles: role of each token (``prompts.PROMPT``, ``FORMAT``, ...), same length as ids.
      task: ``"single"``, ``"pairwise"`` or ``"replay"``.
      conf_value: single: the target confidence in [0, 1]; pairwise: 1.0 if the choice is "Q1" else 0.0.
      decision_index: index in ids of the decision token (see module docstring); -1 if none.
      key: the question id (single, replay) or ``"q1|q2"`` (pairwise), for error messages and stats.
    """

    ids: tuple[int, ...]
    roles: tuple[str, ...]
    task: str
    conf_value: float
    decision_index: int
    key: str

    def __len__(self) -> int:
        return len(self.ids)


# -- encoding -----------------------------------------------------------------------------------------------
def decision_offset(label_ids: Sequence[Sequence[int]]) -> int:
    """Offset of the one token position where the labels differ; -1 if lengths differ or several positions do.

    E.g. ``[[216, 32], [216, 33]]`` (" 0", " 1" with the space as its own token) -> 1.
    """
    if not label_ids or len({len(ids) for ids in label_ids}) != 1:
        return -1
    differing = [t for t in range(len(label_ids[0])) if len({ids[t] for ids in label_ids}) > 1]
    return differing[0] if len(differing) == 1 else -1


def scale_decision_tokens(tokenizer, scale: ConfidenceScale, context: str = prompts.CONFIDENCE_PREFIX
                          ) -> tuple[list[int], list[float]] | None:
    """The decision-token id of each label of ``scale`` and the probability it stands for.

    What ``train.losses.brier_on_labels`` needs (label_token_ids [L], label_values [L]); None when the
    scale has no single decision token for this tokenizer.
    """
    label_ids = prompts.label_token_ids(tokenizer, scale.labels, context)
    offset = decision_offset(label_ids)
    if offset < 0:
        return None
    return [ids[offset] for ids in label_ids], list(scale.values)


def _segments_before(example: prompts.Example, role: str) -> str:
    """Text of the example up to (not including) its first segment with ``role``."""
    out = []
    for seg in example.segments:
        if seg.role == role:
            return "".join(out)
        out.append(seg.text)
    raise ValueError(f"example has no {role!r} segment")


def _decision_index(ids: list[int], roles: list[str], role: str, label: str, labels: Sequence[str],
                    label_ids: Sequence[Sequence[int]], key: str) -> int:
    start = roles.index(role)
    mine = list(label_ids[list(labels).index(label)])
    if ids[start:start + len(mine)] != mine:
        raise ValueError(f"example {key!r}: the {role} tokens {ids[start:start + len(mine)]} differ from the "
                         f"label tokens {mine} checked by prompts.label_token_ids")
    offset = decision_offset(label_ids)
    return start + offset if offset >= 0 else -1


def encode_single(tokenizer, question: Question, record: Mapping[str, Any], scale: ConfidenceScale, *,
                  label_ids: Sequence[Sequence[int]] | None = None) -> Encoded:
    """Tokenizes a single-question target record.

    Args:
      tokenizer: a transformers tokenizer with a chat template.
      question: the record's question.
      record: a single target record (``question_id``, ``answer``, ``target``).
      scale: the confidence scale; the label is ``scale.label_for(target)``.
      label_ids: ``prompts.label_token_ids(tokenizer, scale.labels, prefix)`` if already computed (it
        depends only on the text right before the label; :func:`encode_targets` computes it once);
        None computes and checks it on this example's own prefix.
    """
    return _encode_single(tokenizer, question, record, scale, label_ids)[0]


def _encode_single(tokenizer, question, record, scale, label_ids):
    """(Encoded, the label ids used)."""
    if record["question_id"] != question.id:
        raise ValueError(f"record for {record['question_id']!r} paired with question {question.id!r}")
    label = scale.label_for(float(record["target"]))
    example = prompts.single_example(tokenizer, question, record["answer"], label, scale)
    ids, roles = prompts.tokenize_segments(tokenizer, example.segments)
    if label_ids is None:
        label_ids = prompts.label_token_ids(tokenizer, scale.labels, _segments_before(example, CONFIDENCE))
    decision = _decision_index(ids, roles, CONFIDENCE, label, scale.labels, label_ids, question.id)
    return Encoded(tuple(ids), tuple(roles), "single", float(record["target"]), decision, question.id), label_ids


def encode_pairwise(tokenizer, q1: Question, q2: Question, record: Mapping[str, Any], *,
                    label_ids: Sequence[Sequence[int]] | None = None) -> Encoded:
    """Tokenizes a pairwise target record (``q1``, ``q2``, ``choice``, ``answers``); see :func:`encode_single`."""
    return _encode_pairwise(tokenizer, q1, q2, record, label_ids)[0]


def _encode_pairwise(tokenizer, q1, q2, record, label_ids):
    """(Encoded, the label ids used)."""
    if (record["q1"], record["q2"]) != (q1.id, q2.id):
        raise ValueError(f"pair record ({record['q1']!r}, {record['q2']!r}) given questions ({q1.id!r}, {q2.id!r})")
    example = prompts.pairwise_example(tokenizer, q1, q2, record["choice"], tuple(record["answers"]))
    ids, roles = prompts.tokenize_segments(tokenizer, example.segments)
    if label_ids is None:
        label_ids = prompts.label_token_ids(tokenizer, CHOICE_LABELS, _segments_before(example, CHOICE),
                                            sep="")
    key = f"{q1.id}|{q2.id}"
    decision = _decision_index(ids, roles, CHOICE, record["choice"], CHOICE_LABELS, label_ids, key)
    conf = 1.0 if record["choice"] == "Q1" else 0.0
    return Encoded(tuple(ids), tuple(roles), "pairwise", conf, decision, key), label_ids


def encode_replay(tokenizer, question: Question, record: Mapping[str, Any],
                  instruction: str | None = None) -> Encoded | None:
    """The base model's greedy completion of the answer prompt (``record["greedy"]["text"]``, a sample record
    of ``question``) as a replay example; None when the record has no greedy text."""
    if record.get("id") != question.id:
        raise ValueError(f"sample record {record.get('id')!r} paired with question {question.id!r}")
    greedy = record.get("greedy")
    text = greedy.get("text") if isinstance(greedy, Mapping) else None
    if not isinstance(text, str) or not text.strip():
        return None
    ids, roles = prompts.tokenize_segments(tokenizer, prompts.replay_example(tokenizer, question, text,
                                                                             instruction).segments)
    return Encoded(tuple(ids), tuple(roles), "replay", 0.0, -1, question.id)


def encode_replays(tokenizer, questions: Mapping[str, Question], samples: Sequence[Mapping[str, Any]], *,
                   split: str | None = "train", instruction: str | None = None) -> list[Encoded]:
    """Replay examples for the sample records of `split` (None: all) whose question is in `questions`."""
    out = []
    for rec in samples:
        if (split is None or rec.get("split") == split) and rec.get("id") in questions:
            e = encode_replay(tokenizer, questions[rec["id"]], rec, instruction)
            if e is not None:
                out.append(e)
    return out


def encode_targets(tokenizer, questions: Mapping[str, Question], single: Sequence[Mapping[str, Any]],
                   pairwise: Sequence[Mapping[str, Any]], scale: ConfidenceScale, *, split: str | None = "train",
                   progress: bool = False) -> tuple[list[Encoded], list[Encoded]]:
    """Encodes the target records of one split (None: all).

    The label tokenization is checked once per task (``prompts.label_token_ids`` on the first example's
    prefix) and each example's label tokens are compared with it.

    Raises:
      KeyError: a record names a question id missing from ``questions``.
      prompts.TemplateError: a label does not tokenize on its own after the prompt.
    """
    def question(qid: str) -> Question:
        if qid not in questions:
            raise KeyError(f"target record names question {qid!r}, which is not among the loaded questions")
        return questions[qid]

    single = [r for r in single if split is None or r["split"] == split]
    pairwise = [r for r in pairwise if split is None or r["split"] == split]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(single) + len(pairwise), desc="encoding examples", unit="ex", disable=not progress)
    enc_single: list[Encoded] = []
    label_ids = None
    for r in single:
        e, label_ids = _encode_single(tokenizer, question(r["question_id"]), r, scale, label_ids)
        enc_single.append(e)
        bar.update()
    enc_pair: list[Encoded] = []
    pair_ids = None
    for r in pairwise:
        e, pair_ids = _encode_pairwise(tokenizer, question(r["q1"]), question(r["q2"]), r, pair_ids)
        enc_pair.append(e)
        bar.update()
    bar.close()
    return enc_single, enc_pair


# -- batches ------------------------------------------------------------------------------------------------
def default_buckets(max_len: int, smallest: int = 64) -> tuple[int, ...]:
    """Padded lengths for bucketed batches: 64, 128, 256, ... below max_len, and max_len itself."""
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    return tuple(out) + (max_len,)


def _stable_seed(seed: int, what: str) -> int:
    return int(splits.hash_unit(what, salt=f"batching:{seed}") * 2**31)


class EpochShuffle:
    """Random access into an endless stream of indices 0..n-1: draw k is element k % n of epoch k // n's
    permutation, a fresh permutation per epoch.

    A permutation is the argsort of the raw 64-bit output of PCG64 seeded with (seed, epoch); the raw
    bit stream is fixed by NumPy's stability policy (unlike Generator methods such as ``permutation``),
    so the order is the same on every host and NumPy version. This is the same random-access contract as
    ``grain.MapDataset.range(n).shuffle(seed).repeat()``, vectorized so seeking far ahead stays cheap.
    """

    def __init__(self, n: int, seed: int, cache: int = 4):
        self.n, self.seed, self._cache = n, seed, cache
        self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        """[n] int64: the order of epoch ``epoch``."""
        if epoch not in self._perms:
            raw = np.random.PCG64([self.seed, epoch]).random_raw(self.n)
            self._perms[epoch] = np.argsort(raw, kind="stable").astype(np.int64)
            if len(self._perms) > self._cache:
                self._perms.popitem(last=False)
        return self._perms[epoch]

    def take(self, ks: np.ndarray) -> np.ndarray:
        """Indices drawn at stream positions ks [m] (int64) -> [m] int64."""
        if self.n == 0:
            raise IndexError("draw from an empty example set")
        ks = np.asarray(ks, np.int64)
        out = np.empty(ks.shape, np.int64)
        epochs = ks // self.n
        for epoch in np.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self.permutation(epoch)[ks[sel] % self.n]
        return out

    def __getitem__(self, k: int) -> int:
        return int(self.take(np.asarray([k]))[0])


class BatchBuilder:
    """Fixed-shape training batches from encoded examples; ``builder[step]`` is this process's batch.

    Args:
      single, pairwise: encoded examples of the two tasks (either may be empty if ``mix`` excludes it).
      batch_size: global rows per step (all processes together); must divide by ``shard_count``.
      max_len: row length T when packing; longest allowed example in either mode.
      mix: share of pairwise examples in the stream, in [0, 1] (exact interleave; see module docstring).
      replay: encoded replay examples (:func:`encode_replays`), needed when ``replay_share > 0``.
      replay_share: share of the stream given to replay examples, in [0, 1); the tasks share the rest by
        ``mix`` (with 0 the stream is exactly that of a builder without replay).
      packing: pack several examples per row (default); else one example per row, padded to the smallest
        of ``buckets`` that fits the longest example of the global batch.
      buckets: padded lengths for ``packing=False`` (default :func:`default_buckets`).
      seed: shuffle seed.
      weights: :class:`LossWeights`.
      shard_index, shard_count: this process and the number of processes (``jax.process_index()``,
        ``jax.process_count()``).
      skip_too_long: examples longer than ``max_len`` are counted in ``stats`` and left out; without it
        they raise.
      pad_id: token id written into padding.
      pack_window: examples per packing window (larger packs tighter, costs more when seeking).
    """

    def __init__(self, single: Sequence[Encoded], pairwise: Sequence[Encoded], *, batch_size: int, max_len: int,
                 mix: float = 0.5, packing: bool = True, buckets: Sequence[int] | None = None, seed: int = 0,
                 weights: LossWeights = LossWeights(), shard_index: int = 0, shard_count: int = 1,
                 skip_too_long: bool = False, pad_id: int = 0, pack_window: int = 256,
                 replay: Sequence[Encoded] = (), replay_share: float = 0.0):
        if batch_size < 1 or max_len < 2:
            raise ValueError(f"need batch_size >= 1 and max_len >= 2, got {batch_size}, {max_len}")
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
        if batch_size % shard_count:
            raise ValueError(f"global batch_size {batch_size} does not divide into {shard_count} shards")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix (share of pairwise examples) must be in [0, 1], got {mix}")
        self.batch_size, self.max_len, self.packing, self.seed = batch_size, max_len, packing, seed
        self.weights, self.pad_id, self.pack_window = weights, pad_id, max(int(pack_window), 1)
        self.shard_index, self.shard_count = shard_index, shard_count
        self.local_batch_size = batch_size // shard_count
        self.buckets = tuple(sorted(buckets)) if buckets is not None else default_buckets(max_len)
        if not packing and (not self.buckets or self.buckets[-1] < max_len):
            raise ValueError(f"buckets {self.buckets} must include a length >= max_len {max_len}")
        if not 0.0 <= replay_share < 1.0:
            raise ValueError(f"replay_share (share of replay examples) must be in [0, 1), got {replay_share}")
        self.mix = Fraction(mix).limit_denominator(10_000)
        self.replay_share = Fraction(replay_share).limit_denominator(10_000)

        too_long: dict[str, list[str]] = {task: [] for task in TASKS}
        kept: dict[str, list[Encoded]] = {}
        for task, examples in (("single", single), ("pairwise", pairwise), ("replay", replay)):
            kept[task] = []
            for e in examples:
                if e.task != task:
                    raise ValueError(f"example {e.key!r} has task {e.task!r} but was passed as {task}")
                if len(e) <= max_len:
                    kept[task].append(e)
                else:
                    too_long[task].append(e.key)
        n_long = sum(map(len, too_long.values()))
        if n_long and not skip_too_long:
            first = [k for task in TASKS for k in too_long[task]][:3]
            raise ValueError(f"{n_long} examples are longer than max_len={max_len} tokens (e.g. {first}); raise "
                             "max_len or pass skip_too_long=True to leave them out (they are counted in stats)")
        self.single, self.pairwise, self.replay = kept["single"], kept["pairwise"], kept["replay"]
        self._pools = (self.single, self.pairwise, self.replay)  # indexed by the stream's kind 0, 1, 2
        if self.mix < 1 and not self.single:
            raise ValueError(f"mix={mix} needs single examples, but none are left (too long: "
                             f"{len(too_long['single'])})")
        if self.mix > 0 and not self.pairwise:
            raise ValueError(f"mix={mix} needs pairwise examples, but none are left (too long: "
                             f"{len(too_long['pairwise'])})")
        if self.replay_share > 0 and not self.replay:
            raise ValueError(f"replay_share={replay_share} needs replay examples, but none are left (too long: "
                             f"{len(too_long['replay'])})")
        self._shuffles = [EpochShuffle(len(ex), _stable_seed(seed, task)) for task, ex in zip(TASKS, self._pools)]
        self._lengths = [np.asarray([len(e) for e in ex], np.int64) for ex in self._pools]
        self.too_long = {k: len(v) for k, v in too_long.items()}
        self.too_long_keys = too_long
        self._window_rows: list[int] = [0]  # cumulative row counts of packing windows 0, 1, ...
        self._plans: collections.OrderedDict[int, list[list[int]]] = collections.OrderedDict()

    # -- the example stream ----------------------------------------------------------------------------
    def _stream(self, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kind [n]: 0 single, 1 pairwise, 2 replay; index into that kind's examples [n]) of positions js [n].

        Replay positions are interleaved first (j is replay iff floor((j+1)·r) > floor(j·r)); the other
        positions, renumbered 0, 1, ..., are split between the tasks by ``mix`` the same way."""
        num, den = self.replay_share.numerator, self.replay_share.denominator
        replays_before = (js * num) // den
        is_replay = ((js + 1) * num) // den > replays_before
        ts = js - replays_before  # position in the task stream (ignored where is_replay)
        num, den = self.mix.numerator, self.mix.denominator
        pairs_before = (ts * num) // den
        kind = (((ts + 1) * num) // den > pairs_before).astype(np.int64)
        kind[is_replay] = 2
        idx = np.zeros(js.shape, np.int64)
        for k, counter in ((0, ts - pairs_before), (1, pairs_before), (2, replays_before)):
            sel = kind == k
            if sel.any():
                idx[sel] = self._shuffles[k].take(counter[sel])
        return kind, idx

    def stream_example(self, j: int) -> Encoded:
        """Example j of the mixed, shuffled, repeated stream (a pure function of seed and j)."""
        kind, idx = self._stream(np.asarray([j], np.int64))
        return self._pools[int(kind[0])][int(idx[0])]

    def _stream_lengths(self, js: np.ndarray) -> np.ndarray:
        kind, idx = self._stream(js)
        out = np.zeros(js.shape, np.int64)
        for k in range(3):
            sel = kind == k
            out[sel] = self._lengths[k][idx[sel]]
        return out

    # -- packing ---------------------------------------------------------------------------------------
    def _plan(self, window: int) -> list[list[int]]:
        """Rows of one packing window: lists of stream indices, first-fit decreasing, rows shuffled."""
        if window in self._plans:
            self._plans.move_to_end(window)
            return self._plans[window]
        start = window * self.pack_window
        js = np.arange(start, start + self.pack_window, dtype=np.int64)
        lengths = self._stream_lengths(js)
        rows: list[list[int]] = []
        free: list[int] = []
        for i in np.lexsort((js, -lengths)).tolist():  # longest first, ties by stream order
            n = int(lengths[i])
            for r, space in enumerate(free):
                if space >= n:
                    rows[r].append(start + i)
                    free[r] -= n
                    break
            else:
                rows.append([start + i])
                free.append(self.max_len - n)
        rows = [sorted(r) for r in rows]
        random.Random(f"{self.seed}:rows:{window}").shuffle(rows)
        self._plans[window] = rows
        if len(self._plans) > 8:
            self._plans.popitem(last=False)
        return rows

    def _packed_row(self, g: int) -> list[int]:
        """Stream indices packed into global row g."""
        while self._window_rows[-1] <= g:
            w = len(self._window_rows) - 1
            self._window_rows.append(self._window_rows[-1] + len(self._plan(w)))
        w = bisect.bisect_right(self._window_rows, g) - 1
        return self._plan(w)[g - self._window_rows[w]]

    # -- batches ---------------------------------------------------------------------------------------
    def _rows(self, step: int, lo: int, hi: int) -> list[list[Encoded]]:
        first = step * self.batch_size
        if self.packing:
            return [[self.stream_example(j) for j in self._packed_row(first + r)] for r in range(lo, hi)]
        js = np.arange(first + lo, first + hi, dtype=np.int64)
        return [[self._pools[k][i]] for k, i in zip(*map(np.ndarray.tolist, self._stream(js)))]

    def seq_len(self, step: int) -> int:
        """T of this step's batch (the same on every shard)."""
        if self.packing:
            return self.max_len
        first = step * self.batch_size
        longest = int(self._stream_lengths(np.arange(first, first + self.batch_size, dtype=np.int64)).max())
        return next(b for b in self.buckets if b >= longest)

    def global_batch(self, step: int) -> dict[str, np.ndarray]:
        """All ``batch_size`` rows of step ``step``."""
        return self._assemble(self._rows(step, 0, self.batch_size), self.seq_len(step))

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        """This process's ``batch_size / shard_count`` rows of step ``step``."""
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        lo = self.shard_index * self.local_batch_size
        return self._assemble(self._rows(step, lo, lo + self.local_batch_size), self.seq_len(step))

    def get(self, step: int) -> dict[str, np.ndarray]:
        """Same as ``self[step]`` (the batch-source protocol of ``train/trainer.py``)."""
        return self[step]

    def dataset(self, num_steps: int, start_step: int = 0):
        """A grain ``MapDataset`` whose element i is ``self[start_step + i]``, for i < num_steps - start_step."""
        import grain

        return grain.MapDataset.range(start_step, num_steps).map(self.__getitem__)

    def _assemble(self, rows: list[list[Encoded]], seq_len: int) -> dict[str, np.ndarray]:
        shape = (len(rows), seq_len)
        out = {k: np.zeros(shape, np.float32 if k in ("loss_weights", "loss_mask", "decision_mask",
                                                      "decision_value") else np.int32) for k in BATCH_KEYS}
        out["tokens"].fill(self.pad_id)
        role_w = {role: self.weights.role(role) for role in (PROMPT, FORMAT, ANSWER, CONFIDENCE, CHOICE, REPLAY)}
        for r, examples in enumerate(rows):
            off = 0
            for s, e in enumerate(examples, start=1):
                n = len(e)
                sl = slice(off, off + n)
                out["tokens"][r, sl] = e.ids
                out["positions"][r, sl] = np.arange(n)
                out["segment_ids"][r, sl] = s
                out["targets"][r, off:off + n - 1] = e.ids[1:]
                task_w = self.weights.task(e.task)
                out["loss_weights"][r, off:off + n - 1] = [role_w[role] * task_w for role in e.roles[1:]]
                out["task_ids"][r, off:off + n - 1] = TASK_IDS[e.task]
                if e.task == "single" and e.decision_index >= 1:
                    out["decision_mask"][r, off + e.decision_index - 1] = 1.0
                    out["decision_value"][r, off + e.decision_index - 1] = e.conf_value
                off += n
        out["loss_mask"] = (out["loss_weights"] > 0).astype(np.float32)
        return out

    @property
    def longest_example(self) -> int:
        """Tokens in the longest example this builder can put in a row (the trainer's attention window)."""
        return max([len(e) for ex in self._pools for e in ex] + [1])

    @property
    def stats(self) -> dict[str, Any]:
        """Dataset-level counts: examples per task, lengths, and examples left out as too long."""
        def lengths(ex):
            return [len(e) for e in ex] or [0]
        return {
            "single": len(self.single), "pairwise": len(self.pairwise), "mix": float(self.mix),
            "replay": len(self.replay), "replay_share": float(self.replay_share),
            "too_long": dict(self.too_long), "max_len": self.max_len, "packing": self.packing,
            "mean_len_single": float(np.mean(lengths(self.single))),
            "mean_len_pairwise": float(np.mean(lengths(self.pairwise))),
            "max_len_seen": max(max(lengths(ex)) for ex in self._pools),
            "global_batch_size": self.batch_size, "local_batch_size": self.local_batch_size,
        }


def batch_stats(batches: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]], *,
                too_long: int = 0) -> dict[str, float]:
    """Token accounting over one batch or several.

    Returns:
      tokens (real tokens), slots (B x T summed), padding_fraction, loss_tokens (positions with weight > 0),
      decision_tokens, examples and examples per task (segments whose targets carry that task id), and
      ``too_long`` (passed through: examples left out before batching).
    """
    if isinstance(batches, Mapping):
        batches = [batches]
    acc = collections.Counter()
    for b in batches:
        seg, tasks = b["segment_ids"], b["task_ids"]
        acc["tokens"] += int((seg > 0).sum())
        acc["slots"] += seg.size
        acc["loss_tokens"] += int((b["loss_weights"] > 0).sum())
        acc["decision_tokens"] += int(b["decision_mask"].sum())
        for r in range(seg.shape[0]):
            for s in np.unique(seg[r][seg[r] > 0]):
                task = int(tasks[r][seg[r] == s].max())
                acc["examples"] += 1
                acc[{1: "single_examples", 2: "pairwise_examples", 3: "replay_examples"}.get(
                    task, "other_examples")] += 1
    slots = max(acc["slots"], 1)
    return {"tokens": acc["tokens"], "slots": acc["slots"], "padding_fraction": 1 - acc["tokens"] / slots,
            "loss_tokens": acc["loss_tokens"], "decision_tokens": acc["decision_tokens"],
            "examples": acc["examples"], "single_examples": acc["single_examples"],
            "pairwise_examples": acc["pairwise_examples"], "replay_examples": acc["replay_examples"],
            "too_long": too_long}
