"""Deterministic, sharded batches of Questions with grain.

Used by the sampler and evaluators to walk a question set in fixed-size
batches. Every process builds the same globally shuffled order (same seed)
and takes every ``shard_count``-th element from ``shard_index``, so shards
are disjoint and together cover the set exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain

from metacog_jax.data.records import Question


def _as_question(item: Question | Mapping[str, Any]) -> Question:
    """Passes Questions through; decodes raw TFDS examples (``as_data_source``)."""
    if isinstance(item, Question):
        return item
    record = item["record"]
    if isinstance(record, bytes):
        record = record.decode("utf-8")
    return Question.from_json(json.loads(record))


def question_batches(questions: Sequence[Question] | Sequence[Mapping[str, Any]],
                     batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
                     *, shuffle: bool = True, drop_remainder: bool = False,
                     equal_shards: bool = False) -> grain.MapDataset:
    """A grain dataset of ``list[Question]`` batches for one process.

    Args:
      questions: a list of Questions, or a TFDS ``as_data_source()`` split
        (random access; its examples are decoded to Questions lazily).
      batch_size: questions per batch (the last batch may be smaller unless
        ``drop_remainder``).
      seed: shuffle seed; equal seeds give equal orders on every host.
      shard_index: this process's index (``jax.process_index()``).
      shard_count: number of processes (``jax.process_count()``).
      shuffle: shuffle globally before sharding; False keeps input order.
      drop_remainder: drop a final short batch.
      equal_shards: first truncate the set to a multiple of ``shard_count``
        so every shard has the same length (needed when hosts must run the
        same number of collective steps); the dropped questions are the
        last ones of the shuffled order.

    Returns:
      A ``grain.MapDataset``: ``len()`` is the number of batches, and
      indexing or iterating yields ``list[Question]``. Iteration is
      deterministic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    dataset = grain.MapDataset.source(questions)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    if equal_shards:
        dataset = dataset[: len(dataset) - len(dataset) % shard_count]
    dataset = dataset[shard_index::shard_count]
    dataset = dataset.map(_as_question)
    # batch_fn=list: Questions are not arrays, so keep them as a plain list.
    return dataset.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
