"""Training and evaluation targets from cached self-consistency samples (METHOD.md, paper 1).

Single-question targets
    Consistency c (share of the K samples equal to the modal answer) falls into one of ``n_bins``
    equal-width bins on [0, 1] (bin m is [m/n, (m+1)/n), the last bin closed; the same edges as the ECE
    bins in ``evaluation/metrics.py``). The bins are fit on the TRAIN split only: bin accuracy = mean
    correctness of the modal answer of the train questions in that bin. A question's target is

        mode "binned_accuracy" (default):  accuracy of its bin + u,  u ~ Uniform[-jitter, +jitter]
        mode "consistency":                c + u
        mode "correctness":                modal_correct as 0.0 / 1.0 (no jitter)

    clamped to [0, 1]. u is drawn from a generator seeded by (seed, question id), so a question's
    target does not depend on which other questions are in the run.

    Answer source (ours): with ``answer_source="greedy"`` a completion carries the question's greedy
    answer instead of the modal one, and the bins hold the accuracy of the greedy answers (the target then
    estimates P(greedy answer correct), the quantity the evaluation scores); consistency stays the
    share of samples equal to the modal answer. Training on the model's own greedy answers keeps the
    answer tokens a copy of what it already says, where a modal answer that differs from the greedy one
    teaches a different answer.

    Empty train bins (ours): a bin with no train questions takes the accuracy of the nearest non-empty
    bin (by bin index); when two are equally near, the mean of the two.

    Bin scope (ours): with ``per_domain_bins=True`` (default) each domain gets its own bins, because the
    consistency-accuracy relation differs between, say, 10-option multiple choice and open answers; a
    domain without train questions (out-of-domain sets) uses the bins fit on all train questions.

Balancing (train only; ours)
    Within each domain, targets are histogrammed in ``n_bins`` equal-width bins; every bin holding more
    than ``cap`` questions is subsampled to ``cap``, where ``cap = max_per_bin`` if given, else
    ``ceil(balance_factor x size of the smallest non-empty target bin)``. Which questions stay is decided
    by a seeded hash of the id. Questions are never filtered by correctness (that collapses the labels).
    Test targets are never balanced or subsampled: evaluation sees every test question.

Domain mixing (train only)
    ``domains`` restricts the domains used; ``domain_weights`` (relative shares) subsamples domains so
    their counts are proportional to the weights, keeping as many questions as possible;
    ``domain_caps`` bounds each domain's count.

Pairs
    Built by ``pairs.training_pairs`` from the kept single records: two questions from different
    consistency bins, labelled by consistency or by target (``pair_label``), shown in a seeded random
    order (``pair_orders="random"``) or in both orders, each pair followed by its mirror with the label
    flipped (``pair_orders="both"``). Pairs are built for train (training) and test (evaluation)
    separately. ``pair_label="bin_accuracy"`` is another name for ``"target"`` that is only valid in mode
    "binned_accuracy", where the un-jittered target is the bin accuracy. Whatever trains the pairs, the
    evaluation's AUC_c keeps METHOD's reference: the higher raw consistency.

Nothing is dropped silently: the summary counts, per split and domain, questions excluded by the domain
filter, balanced out, cut by domain weights or caps, questions without a parseable answer, and
questions that found no pair partner.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metacog_jax import artifacts
from metacog_jax.artifacts import iter_jsonl
from metacog_jax.data import pairs as pairs_lib
from metacog_jax.data import records, splits
from metacog_jax.data.records import Question

MODES = ("binned_accuracy", "consistency", "correctness")
# Which answer a training completion carries (and whose correctness the bins, mode "correctness" and the
# pairs' "correct" use): METHOD's modal sampled answer, or the model's own greedy answer (ours).
ANSWER_SOURCES = ("modal", "greedy")
# pair_label values: the pairs.LABEL_SOURCES plus aliases (alias -> (label source, the mode it needs)).
PAIR_LABEL_ALIASES = {"bin_accuracy": ("target", "binned_accuracy")}
PAIR_LABELS = (*pairs_lib.LABEL_SOURCES, *PAIR_LABEL_ALIASES)
POOLED = "*"  # bin-table key of the fit over all train questions
_REQUIRED = ("id", "domain", "split", "consistency", "modal_correct", "modal_answer")


class TargetError(ValueError):
    """Sample records cannot be turned into targets; the message names the question id and field."""


# -- bins ---------------------------------------------------------------------------------------------------
def bin_index(value: float, n_bins: int = 10) -> int:
    """Equal-width bin of a value in [0, 1]: bin m is [m/n, (m+1)/n), the last bin closed (1.0 -> n-1).

    Edges are ``m / n_bins`` in float64, as in ``evaluation.metrics.equal_width_bin_index``, so 0.7 lands
    in the bin that starts at 0.7.
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"value {value} outside [0, 1]")
    inner = np.arange(1, n_bins, dtype=np.float64) / n_bins
    return int(np.searchsorted(inner, value, side="right"))


def fill_empty_bins(accuracy: Sequence[float | None]) -> list[float | None]:
    """Replaces None (empty bins) by the nearest non-empty bin's value; equidistant neighbours are averaged.

    All-empty input stays all None.
    """
    filled = list(accuracy)
    known = [i for i, a in enumerate(accuracy) if a is not None]
    if not known:
        return filled
    for i, a in enumerate(accuracy):
        if a is None:
            d = min(abs(i - j) for j in known)
            near = [accuracy[j] for j in known if abs(i - j) == d]
            filled[i] = sum(near) / len(near)
    return filled


def fit_bins(items: Iterable[Mapping[str, Any]], n_bins: int = 10, correct: str = "modal_correct"
             ) -> dict[str, list]:
    """Bin counts and answer accuracy per consistency bin.

    Args:
      items: records with ``consistency`` and the field ``correct`` (train questions).
      n_bins: number of equal-width bins.
      correct: the field holding the answer's correctness (``modal_correct`` by default).

    Returns:
      ``{"counts": [n_bins] int, "accuracy": [n_bins] float | None (empty), "filled": [n_bins] float |
      None}`` where ``filled`` applies :func:`fill_empty_bins`.
    """
    counts, n_right = [0] * n_bins, [0] * n_bins
    for item in items:
        b = bin_index(item["consistency"], n_bins)
        counts[b] += 1
        n_right[b] += bool(item[correct])
    accuracy = [n_right[b] / counts[b] if counts[b] else None for b in range(n_bins)]
    return {"counts": counts, "accuracy": accuracy, "filled": fill_empty_bins(accuracy)}


def jitter_of(question_id: str, jitter: float, seed: int) -> float:
    """The uniform jitter in [-jitter, +jitter] of one question, a pure function of (seed, id)."""
    if jitter == 0:
        return 0.0
    return random.Random(f"{seed}:jitter:{question_id}").uniform(-jitter, jitter)


def _hash_order(ids: Iterable[str], salt: str) -> list[str]:
    """Ids sorted by a stable hash: a seeded, order-independent random permutation."""
    return sorted(ids, key=lambda i: (splits.hash_unit(i, salt=salt), i))


# -- validation ---------------------------------------------------------------------------------------------
def _validated(samples: Sequence[Mapping[str, Any]], questions: Mapping[str, Question]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for n, s in enumerate(samples):
        qid = s.get("id", f"<record {n}>") if isinstance(s, Mapping) else f"<record {n}>"
        if not isinstance(s, Mapping):
            raise TargetError(f"sample record {n} is a {type(s).__name__}, not a mapping")
        missing = [f for f in _REQUIRED if f not in s]
        if missing:
            raise TargetError(f"sample {qid!r}: missing field(s) {missing}")
        if qid in seen:
            raise TargetError(f"sample {qid!r} appears more than once (two sample files for one domain?)")
        seen.add(qid)
        if qid not in questions:
            raise TargetError(f"sample {qid!r} has no Question record (workdir/questions/ is missing it)")
        q = questions[qid]
        if (q.domain, q.split) != (s["domain"], s["split"]):
            raise TargetError(f"sample {qid!r}: domain/split {s['domain']}/{s['split']} differ from its Question's "
                              f"{q.domain}/{q.split}")
        c = s["consistency"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
            raise TargetError(f"sample {qid!r}: field 'consistency' must be a number in [0, 1], got {c!r}")
        if not isinstance(s["modal_correct"], bool):
            raise TargetError(f"sample {qid!r}: field 'modal_correct' must be true/false, got {s['modal_correct']!r}")
        out.append(dict(s))
    return out


# -- the builder --------------------------------------------------------------------------------------------
def _with_answer(s: Mapping[str, Any], source: str) -> dict:
    """A copy of sample line ``s`` with ``answer`` and ``answer_correct`` taken from ``source``."""
    if source == "modal":
        return dict(s, answer=s["modal_answer"], answer_correct=s["modal_correct"])
    g = s.get("greedy")
    if not isinstance(g, Mapping) or "answer" not in g or not isinstance(g.get("correct"), bool):
        raise TargetError(f"sample {s['id']!r} has no greedy answer; answer_source='greedy' needs samples drawn "
                          f"with a greedy answer (the default of the sample stage)")
    return dict(s, answer=g["answer"], answer_correct=g["correct"])


def _subsample(ids: list[str], keep: int, salt: str) -> tuple[list[str], list[str]]:
    """(kept, dropped): the ``keep`` ids first in a seeded hash order."""
    order = _hash_order(ids, salt)
    kept = set(order[:keep])
    return [i for i in ids if i in kept], [i for i in ids if i not in kept]


def _balance(single: list[dict], n_bins: int, factor: float, max_per_bin: int | None, seed: int,
             domain: str) -> tuple[list[dict], int, int | None]:
    """Subsamples over-full target bins of one domain. Returns (kept records, number dropped, cap)."""
    by_bin: dict[int, list[str]] = collections.defaultdict(list)
    for r in single:
        by_bin[bin_index(r["target"], n_bins)].append(r["question_id"])
    if not by_bin:
        return single, 0, None
    cap = max_per_bin if max_per_bin is not None else math.ceil(factor * min(len(v) for v in by_bin.values()))
    keep: set[str] = set()
    for b, ids in by_bin.items():
        keep.update(_subsample(ids, cap, f"balance:{seed}:{domain}:{b}")[0])
    kept = [r for r in single if r["question_id"] in keep]
    return kept, len(single) - len(kept), cap


def _mix_domains(by_domain: dict[str, list[dict]], weights: Mapping[str, float] | None,
                 caps: Mapping[str, int] | None, seed: int) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Applies domain weights (proportional shares) and caps. Returns (kept per domain, dropped per domain)."""
    keep_n = {d: len(v) for d, v in by_domain.items()}
    if weights is not None:
        missing = sorted(set(by_domain) - set(weights))
        if missing:
            raise TargetError(f"domain_weights has no weight for domain(s) {missing}")
        if any(w < 0 for w in weights.values()):
            raise TargetError(f"domain_weights must be >= 0, got {dict(weights)}")
        positive = {d: weights[d] for d in by_domain if weights[d] > 0 and by_domain[d]}
        if not positive:
            raise TargetError("domain_weights leave no domain with a positive weight and questions")
        scale = min(len(by_domain[d]) / w for d, w in positive.items())
        keep_n = {d: (math.floor(scale * weights[d] + 1e-9) if d in positive else 0) for d in by_domain}
    if caps is not None:
        for d, cap in caps.items():
            if d in keep_n:
                keep_n[d] = min(keep_n[d], int(cap))
    kept, dropped = {}, {}
    for d, items in by_domain.items():
        ids = [r["question_id"] for r in items]
        keep = set(_subsample(ids, keep_n[d], f"domain:{seed}:{d}")[0])
        kept[d] = [r for r in items if r["question_id"] in keep]
        dropped[d] = len(items) - len(kept[d])
    return kept, dropped


def build_targets(samples: Sequence[Mapping[str, Any]], questions: Mapping[str, Question], *, n_bins: int = 10,
                  jitter: float = 0.05, mode: str = "binned_accuracy", balance: bool = True,
                  balance_factor: float = 2.0, max_per_bin: int | None = None, pairs_per_question: int = 1,
                  pair_scope: str = "domain", pair_label: str = "consistency", per_domain_bins: bool = True,
                  seed: int = 0, domains: Sequence[str] | None = None,
                  domain_weights: Mapping[str, float] | None = None,
                  domain_caps: Mapping[str, int] | None = None,
                  pair_orders: str = "random", answer_source: str = "modal") -> tuple[list[dict], list[dict], dict]:
    """Builds single-question and pairwise target records for the train and test splits.

    Args:
      samples: sample lines (``self_consistency.read_samples``), any number of domains and both splits.
      questions: Question records by id (every sample id must be there; pairs need them for ordering).
      n_bins: consistency bins (and target-histogram bins for balancing and the summary).
      jitter: half-width of the uniform jitter added to targets (not in mode "correctness").
      mode: ``"binned_accuracy"`` | ``"consistency"`` | ``"correctness"`` (see module docstring).
      balance: subsample over-represented target bins of the train split.
      balance_factor: cap = ceil(factor x smallest non-empty target bin), unless ``max_per_bin``.
      max_per_bin: explicit cap per target bin (per domain).
      pairs_per_question: partners drawn per question (each draw makes one pair).
      pair_scope: ``"domain"`` pairs within a domain, ``"all"`` across domains.
      pair_label: ``"consistency"``, ``"target"`` or ``"bin_accuracy"`` (= ``"target"``, mode
        "binned_accuracy" only; see module docstring).
      per_domain_bins: fit consistency bins per domain (else one fit over all train questions).
      seed: seeds jitter, balancing, domain subsampling, partner draws and presentation order.
      domains: use only these domains (None: all in ``samples``).
      domain_weights: relative train shares per domain (None: keep all).
      domain_caps: maximum train questions per domain.
      pair_orders: ``"random"`` (one seeded order per pair) or ``"both"`` (each pair also in the other
        order, label flipped, right after it; see ``pairs.swap_order``).
      answer_source: ``"modal"`` (METHOD) or ``"greedy"``: the answer a completion carries and whose
        correctness fits the bins (see module docstring); "greedy" needs samples with greedy answers.

    Returns:
      ``(single, pairwise, summary)``. Single records: ``question_id, domain, split, answer (modal or
      greedy normalized answer or None), answer_correct, target, target_raw (before jitter), consistency,
      modal_correct, bin,
      bin_accuracy, bin_fit (the bin table's key)``. Pairwise records: ``q1, q2 (ids in shown order),
      choice ("Q1"/"Q2"), split, domains, answers, targets, consistency, correct, bins``; with
      ``pair_orders="both"`` a pair's two orders are adjacent. The summary is JSON-serializable; see
      :func:`format_summary`.

    Raises:
      TargetError: malformed samples, unknown ids, bad options, or no train questions to fit bins in mode
        "binned_accuracy".
    """
    if mode not in MODES:
        raise TargetError(f"mode must be one of {MODES}, got {mode!r}")
    if pair_label not in PAIR_LABELS:
        raise TargetError(f"pair_label must be one of {PAIR_LABELS}, got {pair_label!r}")
    label_by = pair_label
    if pair_label in PAIR_LABEL_ALIASES:
        label_by, needs_mode = PAIR_LABEL_ALIASES[pair_label]
        if mode != needs_mode:
            raise TargetError(f"pair_label {pair_label!r} needs mode {needs_mode!r} (the target is the bin "
                              f"accuracy only there), got mode {mode!r}; use pair_label 'target'")
    if pair_scope not in pairs_lib.SCOPES:
        raise TargetError(f"pair_scope must be 'domain' or 'all', got {pair_scope!r}")
    if answer_source not in ANSWER_SOURCES:
        raise TargetError(f"answer_source must be one of {ANSWER_SOURCES}, got {answer_source!r}")
    if pair_orders not in pairs_lib.ORDERS:
        raise TargetError(f"pair_orders must be one of {pairs_lib.ORDERS}, got {pair_orders!r}")
    if not 0.0 <= jitter < 0.5 or n_bins < 1 or pairs_per_question < 0 or balance_factor <= 0:
        raise TargetError(f"need 0 <= jitter < 0.5, n_bins >= 1, pairs_per_question >= 0, balance_factor > 0; got "
                          f"{jitter}, {n_bins}, {pairs_per_question}, {balance_factor}")
    if max_per_bin is not None and max_per_bin < 1:
        raise TargetError(f"max_per_bin must be >= 1, got {max_per_bin}")
    if domain_caps is not None and any(isinstance(v, bool) or int(v) != v or v < 0 for v in domain_caps.values()):
        raise TargetError(f"domain_caps must be whole numbers >= 0, got {dict(domain_caps)}")
    items = [_with_answer(s, answer_source) for s in _validated(samples, questions)]

    excluded: dict[str, int] = collections.Counter()
    if domains is not None:
        present = {s["domain"] for s in items}
        unknown = sorted(set(domains) - present)
        if unknown:
            raise TargetError(f"domains {unknown} have no samples (domains present: {sorted(present)})")
        for s in items:
            if s["domain"] not in domains:
                excluded[s["domain"]] += 1
        items = [s for s in items if s["domain"] in domains]

    train = [s for s in items if s["split"] == "train"]
    tables: dict[str, dict[str, list]] = {}
    if train:
        tables[POOLED] = fit_bins(train, n_bins, "answer_correct")
        if per_domain_bins:
            for d in sorted({s["domain"] for s in train}):
                tables[d] = fit_bins([s for s in train if s["domain"] == d], n_bins, "answer_correct")
    if mode == "binned_accuracy" and not train:
        raise TargetError("mode 'binned_accuracy' fits consistency bins on the train split, but no sample has "
                          "split 'train'")

    single_all: list[dict] = []
    for s in items:
        b = bin_index(s["consistency"], n_bins)
        fit = s["domain"] if s["domain"] in tables else POOLED
        bin_acc = tables[fit]["filled"][b] if fit in tables else None
        if mode == "binned_accuracy":
            raw = float(bin_acc)
        elif mode == "consistency":
            raw = float(s["consistency"])
        else:
            raw = 1.0 if s["answer_correct"] else 0.0
        u = 0.0 if mode == "correctness" else jitter_of(s["id"], jitter, seed)
        single_all.append({
            "question_id": s["id"], "domain": s["domain"], "split": s["split"], "answer": s["answer"],
            "answer_correct": s["answer_correct"], "target": min(1.0, max(0.0, raw + u)), "target_raw": raw,
            "consistency": float(s["consistency"]), "modal_correct": s["modal_correct"], "bin": b,
            "bin_accuracy": bin_acc,
            "bin_fit": fit if fit in tables else None,
        })

    summary: dict[str, Any] = {
        "mode": mode, "answer_source": answer_source, "n_bins": n_bins, "jitter": jitter, "seed": seed,
        "per_domain_bins": per_domain_bins,
        "balance": {"enabled": balance, "factor": balance_factor, "max_per_bin": max_per_bin, "caps": {}},
        "pairs_per_question": pairs_per_question, "pair_scope": pair_scope, "pair_label": pair_label,
        "pair_label_by": label_by, "pair_orders": pair_orders,
        "domain_weights": dict(domain_weights) if domain_weights else None,
        "domain_caps": dict(domain_caps) if domain_caps else None,
        "excluded_by_domain_filter": dict(excluded),
        "bins": {k: {"counts": v["counts"], "accuracy": v["accuracy"], "filled": v["filled"]}
                 for k, v in tables.items()},
        "splits": {},
    }
    single_out: list[dict] = []
    pair_out: list[dict] = []
    for split in records.SPLITS:
        recs = [r for r in single_all if r["split"] == split]
        by_domain: dict[str, list[dict]] = collections.defaultdict(list)
        for r in recs:
            by_domain[r["domain"]].append(r)
        per_domain = {d: {"samples": len(v), "no_answer": sum(r["answer"] is None for r in v),
                          "balanced_out": 0, "mixing_dropped": 0} for d, v in sorted(by_domain.items())}
        if split == "train":
            if balance:
                for d in list(by_domain):
                    by_domain[d], dropped, cap = _balance(by_domain[d], n_bins, balance_factor, max_per_bin, seed, d)
                    per_domain[d]["balanced_out"] = dropped
                    summary["balance"]["caps"][d] = cap
            if domain_weights is not None or domain_caps is not None:
                by_domain, dropped_mix = _mix_domains(by_domain, domain_weights, domain_caps, seed)
                for d, n in dropped_mix.items():
                    per_domain[d]["mixing_dropped"] = n
        kept = [r for d in sorted(by_domain) for r in by_domain[d]]
        for d in per_domain:
            per_domain[d]["single"] = len(by_domain[d])
        pairs, pair_stats = (pairs_lib.training_pairs(kept, questions, n_pairs=pairs_per_question, scope=pair_scope,
                                                      label_by=label_by, seed=seed, split=split,
                                                      orders=pair_orders)
                             if pairs_per_question > 0 else ([], dict(pairs_lib.NO_PAIRS_STATS)))
        histogram = [0] * n_bins
        for r in kept:
            histogram[bin_index(r["target"], n_bins)] += 1
        summary["splits"][split] = {
            "samples": len(recs), "single": len(kept), "pairwise": len(pairs),
            "distinct_pairs": len(pairs) // 2 if pair_orders == "both" else len(pairs),
            "target_histogram": histogram,
            "mean_target": float(np.mean([r["target"] for r in kept])) if kept else None,
            "modal_accuracy": float(np.mean([r["modal_correct"] for r in kept])) if kept else None,
            "answer_accuracy": float(np.mean([r["answer_correct"] for r in kept])) if kept else None,
            "q1_share": (sum(p["choice"] == "Q1" for p in pairs) / len(pairs)) if pairs else None,
            "per_domain": per_domain, **pair_stats,
        }
        single_out.extend(kept)
        pair_out.extend(pairs)
    return single_out, pair_out, summary


# -- files --------------------------------------------------------------------------------------------------
def write_targets(workdir: str | os.PathLike[str], single: Sequence[Mapping], pairwise: Sequence[Mapping],
                  summary: Mapping) -> Path:
    """Writes ``workdir/targets/{single.jsonl, pairwise.jsonl, summary.json}`` atomically; returns the folder."""
    out = Path(workdir) / "targets"
    artifacts.write_jsonl(out / "single.jsonl", single)
    artifacts.write_jsonl(out / "pairwise.jsonl", pairwise)
    artifacts.write_json(out / "summary.json", summary)
    return out


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    out = []
    for line_no, record in iter_jsonl(path, TargetError):
        missing = [k for k in required if k not in record]
        if missing:
            raise TargetError(f"{path}:{line_no}: missing field(s) {missing}")
        out.append(record)
    return out


def read_targets(workdir: str | os.PathLike[str]) -> tuple[list[dict], list[dict], dict]:
    """Reads what :func:`write_targets` wrote: (single, pairwise, summary)."""
    folder = Path(workdir) / "targets"
    single = _read_jsonl(folder / "single.jsonl", ("question_id", "split", "answer", "target", "consistency"))
    pairwise = _read_jsonl(folder / "pairwise.jsonl", ("q1", "q2", "choice", "answers", "targets", "consistency"))
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    return single, pairwise, summary


def load_sampled(workdir: str | os.PathLike[str], domains: Sequence[str] | None = None
                 ) -> tuple[list[dict], dict[str, Question]]:
    """Every sample line and Question record cached in ``workdir/samples`` and ``workdir/questions``.

    Args:
      workdir: the run directory.
      domains: read only ``<domain>.jsonl`` of these domains (None: every file).

    Raises:
      FileNotFoundError: a requested domain has no samples or questions file.
      SamplesError / RecordError: a malformed file (``file:line``).
    """
    from metacog_jax.data.self_consistency import read_samples  # avoid a cycle at import time

    workdir = Path(workdir)
    names = (list(domains) if domains is not None
             else sorted(p.stem for p in (workdir / "samples").glob("*.jsonl")))
    samples: list[dict] = []
    questions: dict[str, Question] = {}
    for name in names:
        path, qpath = workdir / "samples" / f"{name}.jsonl", workdir / "questions" / f"{name}.jsonl"
        for p in (path, qpath):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found: run the sample stage for domain {name!r} first")
        samples.extend(read_samples(path))
        questions.update({q.id: q for q in records.read_questions(qpath)})
    return samples, questions


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable summary: target histograms, counts per split and domain, pair balance, drops."""
    lines = [f"targets: mode={summary['mode']} bins={summary['n_bins']} jitter={summary['jitter']} "
             f"seed={summary['seed']} balance={summary['balance']['enabled']}"
             + (f" pair_label={summary['pair_label']} pair_scope={summary['pair_scope']} "
                f"pair_orders={summary['pair_orders']}" if "pair_orders" in summary else "")]
    excluded = summary.get("excluded_by_domain_filter") or {}
    if excluded:
        lines.append("  excluded by domain filter: " + ", ".join(f"{d}={n}" for d, n in sorted(excluded.items())))
    for key, table in summary.get("bins", {}).items():
        name = "all train" if key == POOLED else key
        acc = " ".join("  -  " if a is None else f"{a:.2f} " for a in table["accuracy"])
        lines.append(f"  consistency bins ({name}): counts {table['counts']}")
        lines.append(f"      accuracy {acc}")
    n_bins = summary["n_bins"]
    for split, s in summary["splits"].items():
        both = summary.get("pair_orders") == "both"
        lines.append(f"[{split}] samples {s['samples']} -> single {s['single']}, pairwise {s['pairwise']}"
                     + (f" ({s['distinct_pairs']} pairs x 2 orders)" if both else "")
                     + (f", Q1 share {s['q1_share']:.3f}" if s["q1_share"] is not None else "")
                     + f", unpaired {s['unpaired']}, duplicate pairs skipped {s['duplicates_skipped']}")
        hist = s["target_histogram"]
        top = max(hist) if hist and max(hist) > 0 else 1
        for b, count in enumerate(hist):
            lo, hi = b / n_bins, (b + 1) / n_bins
            lines.append(f"    target [{lo:.1f},{hi:.1f}{']' if b == n_bins - 1 else ')'} "
                         f"{count:6d} {'#' * round(30 * count / top)}")
        for d, c in s["per_domain"].items():
            lines.append(f"    {d}: samples {c['samples']}, single {c['single']}, balanced out {c['balanced_out']}, "
                         f"mixing dropped {c['mixing_dropped']}, no parseable answer {c['no_answer']}")
    return "\n".join(lines)
