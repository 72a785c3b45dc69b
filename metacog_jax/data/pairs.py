"""Everything pairwise (METHOD.md, paper 1, the comparison task): which questions are paired, which of
the two is labelled better, and in which order they are shown.

Training pairs (:func:`training_pairs`)
    Two questions from DIFFERENT consistency bins (within one domain by default, ``scope="all"`` across
    domains); the label is the question with the higher consistency (``label_by="consistency"``,
    matching AUC_c; never tied since the bins differ) or with the higher un-jittered target
    (``label_by="target"``; partners with an equal target are not drawn). Each question draws
    ``n_pairs`` partners; an unordered pair is never drawn twice.

Order (:func:`order_pair`, :func:`swap_order`)
    Which question is shown first is a seeded coin per (seed, pair key), so about half of the pairs
    have the answer "Q1" and a position bias cannot pass for skill (``orders="random"``, the default).
    With ``orders="both"`` (METHOD.md, "Position bias", training side) every pair is emitted twice,
    the coin's order followed directly by its mirror (:func:`swap_order`: q1/q2 and every per-position
    list swapped, the choice flipped), so exactly half the records answer "Q1" and the position carries
    no information about the label.

Evaluation pairs (:func:`evaluation_pairs`)
    Distinct unordered pairs of a test set's items, drawn uniformly and reproducibly; the eval stage
    shows each in the order :func:`order_pair` gives.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping

from metacog_jax.data.records import Question

# What the model answers on a pair: the position of the question it is more likely to answer correctly.
CHOICE_LABELS = ("Q1", "Q2")
# What decides which question of a training pair is the better one.
LABEL_SOURCES = ("consistency", "target")
# Where training partners are drawn from.
SCOPES = ("domain", "all")
# How training pairs are shown: one seeded random order, or both orders (the second mirrored).
ORDERS = ("random", "both")
# The per-position lists of a pair record, in shown order (swapped together with q1/q2).
POSITION_FIELDS = ("domains", "answers", "targets", "consistency", "correct", "bins")
NO_PAIRS_STATS = {"unpaired": 0, "duplicates_skipped": 0}


def order_pair(q_a: Question, q_b: Question, a_is_better: bool, seed: int, key: str) -> tuple[
        Question, Question, str]:
    """Randomise which question is shown first (position bias), reproducibly per (seed, key).

    Returns (q1, q2, choice) where choice names the better question's position (a CHOICE_LABELS entry).
    """
    first_a = random.Random(f"{seed}:{key}").random() < 0.5
    if first_a:
        return q_a, q_b, "Q1" if a_is_better else "Q2"
    return q_b, q_a, "Q2" if a_is_better else "Q1"


def swap_order(record: Mapping) -> dict:
    """The same pair shown the other way round: q1/q2 and every per-position list swapped, choice flipped."""
    out = dict(record)
    out["q1"], out["q2"] = record["q2"], record["q1"]
    out["choice"] = CHOICE_LABELS[1 - CHOICE_LABELS.index(record["choice"])]
    for name in POSITION_FIELDS:
        first, second = record[name]
        out[name] = [second, first]
    return out


def training_pairs(single: list[dict], questions: Mapping[str, Question], *, n_pairs: int, scope: str,
                   label_by: str, seed: int, split: str, orders: str = "random") -> tuple[list[dict], dict[str, int]]:
    """Pairs across different consistency bins from single-question target records.

    Args:
      single: target records (``question_id, domain, bin, consistency, target, target_raw, answer,
        answer_correct``) of one split.
      questions: Question records by id (for the shown order).
      n_pairs: partners drawn per question.
      scope: "domain" (partners from the same domain) or "all".
      label_by: "consistency" or "target" (see the module docstring).
      seed: seeds partner draws and the shown order.
      split: written into every pair record.
      orders: "random" (one seeded order per pair) or "both" (each pair followed by its mirror,
        :func:`swap_order`; the record count doubles and exactly half the choices are "Q1").

    Returns:
      (pair records, counts of questions without a partner / draws skipped as duplicates). A record:
      ``q1, q2 (ids in shown order), choice ("Q1"/"Q2"), split, domains, answers, targets, consistency,
      correct, bins``, each list in shown order.
    """
    if label_by not in LABEL_SOURCES:
        raise ValueError(f"pair label must be one of {LABEL_SOURCES}, got {label_by!r}")
    if scope not in SCOPES:
        raise ValueError(f"pair scope must be one of {SCOPES}, got {scope!r}")
    if orders not in ORDERS:
        raise ValueError(f"pair orders must be one of {ORDERS}, got {orders!r}")
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for r in single:
        groups[r["domain"] if scope == "domain" else "all"].append(r)
    out: list[dict] = []
    stats = dict(NO_PAIRS_STATS)
    field = "consistency" if label_by == "consistency" else "target_raw"
    for group in groups.values():
        group = sorted(group, key=lambda r: r["question_id"])
        by_bin: dict[int, list[dict]] = collections.defaultdict(list)
        for r in group:
            by_bin[r["bin"]].append(r)
        used: set[tuple[str, str]] = set()
        for a in group:
            candidates = [r for b, rs in sorted(by_bin.items()) if b != a["bin"] for r in rs
                          if label_by == "consistency" or r["target_raw"] != a["target_raw"]]
            if not candidates:
                stats["unpaired"] += 1
                continue
            for j in range(n_pairs):
                rng = random.Random(f"{seed}:pair:{a['question_id']}:{j}")
                for _ in range(8):  # a few redraws to avoid repeating an unordered pair
                    b = candidates[rng.randrange(len(candidates))]
                    key = tuple(sorted((a["question_id"], b["question_id"])))
                    if key not in used:
                        break
                else:
                    stats["duplicates_skipped"] += 1
                    continue
                used.add(key)
                q1, q2, choice = order_pair(questions[a["question_id"]], questions[b["question_id"]],
                                            a[field] > b[field], seed, f"{key[0]}|{key[1]}")
                r1, r2 = (a, b) if q1.id == a["question_id"] else (b, a)
                record = {
                    "q1": q1.id, "q2": q2.id, "choice": choice, "split": split,
                    "domains": [r1["domain"], r2["domain"]],
                    "answers": [r1["answer"], r2["answer"]],
                    "targets": [r1["target"], r2["target"]],
                    "consistency": [r1["consistency"], r2["consistency"]],
                    "correct": [r1["answer_correct"], r2["answer_correct"]],
                    "bins": [r1["bin"], r2["bin"]],
                }
                out.append(record)
                if orders == "both":  # the mirror right after: the two orders stay together
                    out.append(swap_order(record))
    return out, stats


def evaluation_pairs(n_items: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """Up to `n_pairs` distinct unordered pairs (i < j) of range(n_items), drawn uniformly, reproducibly.

    All n(n-1)/2 pairs when fewer exist; the order of the list is random too.
    """
    total = n_items * (n_items - 1) // 2
    rng = random.Random(f"pairs:{seed}")
    if 2 * n_pairs >= total:
        # Dense request: enumerate (rejection sampling would stall near the total).
        pairs = [(i, j) for i in range(n_items) for j in range(i + 1, n_items)]
        rng.shuffle(pairs)
        return pairs[:n_pairs]
    chosen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n_pairs:
        i, j = rng.sample(range(n_items), 2)
        pair = (min(i, j), max(i, j))
        if pair not in chosen:
            chosen.add(pair)
            out.append(pair)
    return out
