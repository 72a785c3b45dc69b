"""The eval stage: both metacognitive tasks on every dataset, metrics with bootstrap intervals, on disk.

For each dataset (normally a test split):
  * single task: each question with the model's greedy answer (from its sample record) is scored for its
    confidence distribution (scoring.score_single); confidence = expected value sum_k p_k v_k. Metrics:
    accuracy, mean confidence, ECE, ACE, Brier, AUROC, AURC, against greedy correctness, with the counts
    of correct and wrong answers (an AUROC over few of either says little).
  * pairwise task: seeded random pairs of its questions (pairs.evaluation_pairs), each scored in BOTH
    orders for P("Q1") renormalized over {Q1, Q2}. The primary readout is the debiased preference for the
    first-listed question A over B, p~ = 1/2 [P(Q1 | A, B) + 1 - P(Q1 | B, A)] (METHOD.md, position
    bias): AUC_c over pairs whose self-consistencies differ and AUC_a over pairs with exactly one correct
    greedy answer, each as a choice rate (A when p~ > 1/2) and threshold-free (AUROC of p~, both
    directions), plus a Bradley-Terry fit of p~ that gives each question a score (its AUROC against
    correctness and rank correlation with consistency). The raw readout of one seeded random order
    (`pairwise_raw`, what a single presentation gives) and the first-position choice rate over both
    orders (`q1_choice_rate`, 0.5 = no position bias) are kept as diagnostics.
Intervals are 95% percentile bootstrap intervals: resampling items for the single task and questions
(clusters) for the pairwise task, where a pair counts count[A] * count[B] times (pairs share questions).

Files (written atomically, metrics.json last, so its presence means the stage finished):
  out_dir/<dataset>.jsonl  one line per item ("task": "single") and per pair ("task": "pairwise");
  out_dir/<dataset>.metrics.json  that dataset's entry and a fingerprint of its inputs (for resume);
  out_dir/metrics.json     {"ece_definition", "scale", "labels", ..., "datasets": {name: {...}}}.

With resume=True a dataset whose files exist with the same fingerprint (settings, question ids, greedy
answers and grades, consistencies, `tag`) is read back instead of scored again.

With several processes every one calls :func:`evaluate` with the same inputs: the scorer and sampler divide
their batches between them (``metacog_jax.multihost``), every process computes the same metrics from the
gathered scores, and process 0 alone reads the files to resume from and writes the outputs.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from metacog_jax import artifacts, multihost
from metacog_jax.data import pairs as pairs_lib
from metacog_jax.data import prompts
from metacog_jax.data.records import Question
from metacog_jax.evaluation import bootstrap, bradley_terry, metrics, scoring

log = logging.getLogger(__name__)

ROLES = ("in_domain", "out_of_domain")
# Bumped when what an eval writes changes, so a resumed run re-scores instead of reusing old files.
EVAL_LAYOUT = 2


# -- metric bundles (module-level so the bootstrap's compiled function is reused) ----------------------
def single_metric_fn(conf, correct):
    """Single-task metrics of P(correct) `conf` [N] against 0/1 `correct` [N] (jax-traceable)."""
    return {
        "accuracy": metrics.accuracy(correct),
        "mean_confidence": metrics.mean_confidence(conf),
        "ece": metrics.ece(conf, correct),
        "ace": metrics.ace(conf, correct),
        "brier": metrics.brier(conf, correct),
        "auroc": metrics.auroc(conf, correct),
        "aurc": metrics.aurc(conf, correct),
    }


def pairwise_metric_fn(p_q1, consistency_q1, consistency_q2, correct_q1, correct_q2):
    """Pairwise metrics of p_q1 [P] (jax-traceable); AUC_c / AUC_a over their own subsets of pairs."""
    return {
        "auc_c": metrics.auc_c(p_q1, consistency_q1, consistency_q2),
        "auc_c_auroc": metrics.auc_c(p_q1, consistency_q1, consistency_q2, mode="auroc"),
        "auc_a": metrics.auc_a(p_q1, correct_q1, correct_q2),
        "auc_a_auroc": metrics.auc_a(p_q1, correct_q1, correct_q2, mode="auroc"),
        "q1_choice_rate": jnp.mean((jnp.asarray(p_q1) > 0.5).astype(float)),
    }


def debiased_preference(p_q1_ab, p_q1_ba):
    """p~(A over B) = 1/2 [P(Q1 | A, B) + 1 - P(Q1 | B, A)] from the two presentations of a pair.

    Under an additive position bias in log-odds the bias enters both terms with opposite signs, so the
    sign of p~ - 1/2 is bias-free (METHOD.md)."""
    return 0.5 * (p_q1_ab + 1.0 - p_q1_ba)  # NumPy in, NumPy out (float64 rows); traced in the statistics


def _both_directions(p, first, second, w):
    """Each pair once as (A, B) with score p and once as (B, A) with score 1 - p: a threshold-free AUROC
    over pairs whose listed order carries no label information."""
    return (jnp.concatenate([p, 1.0 - p]), jnp.concatenate([first, second]), jnp.concatenate([second, first]),
            jnp.concatenate([w, w]))


def pairwise_cluster_stat(counts, item_a, item_b, p_q1_ab, p_q1_ba, consistency, correct, strength=None,
                          pair_weight=None):
    """Debiased pairwise metrics under question multiplicities `counts` [N] (jax-traceable).

    item_a, item_b: int [P] question indices as listed (A first); p_q1_ab, p_q1_ba: P("Q1") with A shown
    first and with B shown first; consistency, correct: [N] per question. A pair weighs counts[A] *
    counts[B]. With the Bradley-Terry `strength` and `pair_weight` [N] of the full-data fit, also the
    strengths' AUROC against correctness and rank correlation with consistency (strengths held fixed, as
    the single task's bootstrap holds each stated confidence)."""
    bt = ({} if strength is None else
          bradley_terry.fixed_strength_statistics(counts, strength, pair_weight, correct, consistency))
    bt.pop("bt_n_items_without_pairs", None)  # a count, not a metric: the entry reports it unresampled
    w = counts[item_a] * counts[item_b]
    p = debiased_preference(p_q1_ab, p_q1_ba)
    ca, cb, ya, yb = consistency[item_a], consistency[item_b], correct[item_a], correct[item_b]
    return {
        "auc_c": metrics.auc_c(p, ca, cb, weights=w),
        "auc_c_auroc": metrics.auc_c(*_both_directions(p, ca, cb, w), mode="auroc"),
        "auc_a": metrics.auc_a(p, ya, yb, weights=w),
        "auc_a_auroc": metrics.auc_a(*_both_directions(p, ya, yb, w), mode="auroc"),
        # Share of all 2P presentations answered "Q1": the position bias the debiasing removes.
        "q1_choice_rate": metrics._safe_ratio(
            jnp.sum(w * ((jnp.asarray(p_q1_ab) > 0.5).astype(float) + (jnp.asarray(p_q1_ba) > 0.5))),
            2.0 * jnp.sum(w)),
        **bt,
    }


def raw_pairwise_cluster_stat(counts, item_q1, item_q2, p_q1, consistency, correct):
    """The single-presentation readout (Q1/Q2 in a seeded random order) under question multiplicities."""
    w = counts[item_q1] * counts[item_q2]
    c1, c2, y1, y2 = consistency[item_q1], consistency[item_q2], correct[item_q1], correct[item_q2]
    return {
        "auc_c": metrics.auc_c(p_q1, c1, c2, weights=w),
        "auc_c_auroc": metrics.auc_c(p_q1, c1, c2, weights=w, mode="auroc"),
        "auc_a": metrics.auc_a(p_q1, y1, y2, weights=w),
        "auc_a_auroc": metrics.auc_a(p_q1, y1, y2, weights=w, mode="auroc"),
        "q1_choice_rate": metrics._safe_ratio(jnp.sum(w * (jnp.asarray(p_q1) > 0.5)), jnp.sum(w)),
    }


# -- inputs ---------------------------------------------------------------------------------------------
def _as_question(item: Question | Mapping[str, Any], dataset: str, i: int) -> Question:
    if isinstance(item, Question):
        return item
    try:
        return Question.from_json(item)
    except (ValueError, TypeError) as e:
        raise ValueError(f"dataset {dataset!r}: question {i}: {e}") from e


def _join_records(dataset: str, questions: Sequence[Question], records: Iterable[Mapping[str, Any]]
                  ) -> list[dict[str, Any]]:
    """Per question: greedy answer, its correctness and the self-consistency, checked, in question order."""
    by_id: dict[str, Mapping[str, Any]] = {}
    for j, rec in enumerate(records):
        if not isinstance(rec, Mapping) or "id" not in rec:
            raise ValueError(f"dataset {dataset!r}: sample record {j} is not an object with an 'id' field")
        by_id[str(rec["id"])] = rec
    missing = [q.id for q in questions if q.id not in by_id]
    if missing:
        raise ValueError(f"dataset {dataset!r}: no sample record (answers) for {len(missing)} question(s), "
                         f"e.g. {missing[:5]}; run the sample stage for them")
    out = []
    for q in questions:
        rec = by_id[q.id]
        greedy = rec.get("greedy")
        if not isinstance(greedy, Mapping) or "answer" not in greedy or "correct" not in greedy:
            raise ValueError(f"dataset {dataset!r}: sample record {q.id!r}: field 'greedy' must hold 'answer' "
                             f"and 'correct', got {greedy!r}")
        consistency = rec.get("consistency")
        if not isinstance(consistency, (int, float)) or not 0.0 <= float(consistency) <= 1.0:
            raise ValueError(f"dataset {dataset!r}: sample record {q.id!r}: field 'consistency' must be a "
                             f"number in [0, 1], got {consistency!r}")
        if greedy["answer"] is not None and not isinstance(greedy["answer"], str):
            raise ValueError(f"dataset {dataset!r}: sample record {q.id!r}: greedy answer must be a string "
                             f"or null, got {greedy['answer']!r}")
        out.append(dict(answer=greedy["answer"], correct=bool(greedy["correct"]), consistency=float(consistency),
                        modal_correct=rec.get("modal_correct"), grader=str(greedy.get("grader", "unrecorded"))))
    return out


# -- outputs --------------------------------------------------------------------------------------------
def _with_intervals(fn, arrays, n_resamples: int, seed: int) -> dict[str, dict[str, float]]:
    return bootstrap.bootstrap_cis(fn, tuple(np.asarray(a, np.float64) for a in arrays), n_resamples=n_resamples,
                                   seed=seed)


# -- the stage ------------------------------------------------------------------------------------------
def evaluate(model, tokenizer, datasets: Mapping[str, tuple[Sequence[Question | Mapping], Sequence[Mapping]]], *,
             scale: prompts.ConfidenceScale | str = "0-1", role_of: Mapping[str, str], n_pairs: int | Mapping[str, int] = 500,
             seed: int = 0, batch_size: int = 16, n_resamples: int = 1000, out_dir: str | os.PathLike,
             verbalized: bool = False, sampler=None, mesh=None, verbalized_max_new_tokens: int = 8,
             resume: bool = False, tag: str = "", progress: bool = False) -> dict[str, Any]:
    """Score both tasks on every dataset, compute metrics with bootstrap intervals, write the files.

    Args:
      model, tokenizer: the Decoder being evaluated and its tokenizer.
      datasets: name -> (questions, sample records). Questions are Question objects or their JSON dicts;
        sample records are dicts with at least ``id``, ``consistency`` and ``greedy: {answer, correct}``
        (the sample stage's records). Every question needs a record; extra records are ignored.
      scale: confidence scale (object or name).
      role_of: name -> "in_domain" | "out_of_domain", for every dataset.
      n_pairs: pairs per dataset for the pairwise task (fewer when the dataset has fewer pairs), or a
        mapping dataset -> pairs.
      seed: seeds the pairs, their Q1/Q2 order and the bootstrap.
      batch_size: rows per scoring call.
      n_resamples: bootstrap resamples per metric set.
      out_dir: where <dataset>.jsonl and metrics.json go.
      verbalized: also generate a verbalized confidence / choice greedily (needs `sampler`).
      mesh: optional mesh for batch-sharded scoring.
      resume: reuse datasets already scored with the same fingerprint (see the module docstring).
      tag: extra fingerprint text, e.g. the checkpoint step, so a newer model is never mistaken for an older.

    Returns:
      The metrics.json content as a dict.

    Raises:
      ValueError: an empty dataset (named), a missing or unknown role, a question without a sample
        record (id named), a malformed record (field named), or a confidence scale whose labels cannot
        be tokenized on their own by this tokenizer.
    """
    if not datasets:
        raise ValueError("datasets is empty: nothing to evaluate")
    if verbalized and sampler is None:
        raise ValueError("verbalized=True needs a sampler")
    pairs_of = dict(n_pairs) if isinstance(n_pairs, Mapping) else {name: n_pairs for name in datasets}
    if any(name not in pairs_of for name in datasets) or any(v < 0 for v in pairs_of.values()):
        raise ValueError(f"n_pairs must be >= 0 for every dataset, got {n_pairs}")
    scale = prompts.confidence_scale(scale) if isinstance(scale, str) else scale
    # Start-up checks before any model call: labels, roles, inputs.
    label_set = scoring.confidence_label_set(tokenizer, scale)
    pair_set = scoring.pair_label_set(tokenizer)
    prepared = {}
    for name, value in datasets.items():
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"dataset {name!r}: expected (questions, sample_records)")
        raw_questions, records = value
        if not raw_questions:
            raise ValueError(f"dataset {name!r} is empty: it has no questions to evaluate")
        role = role_of.get(name)
        if role not in ROLES:
            raise ValueError(f"dataset {name!r}: role must be one of {ROLES}, got {role!r} (role_of)")
        questions = [_as_question(q, name, i) for i, q in enumerate(raw_questions)]
        ids = [q.id for q in questions]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"dataset {name!r}: question id {dup!r} appears more than once")
        prepared[name] = (role, questions, _join_records(name, questions, records))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "ece_definition": metrics.ECE_DEFINITION,
        "confidence": "expected value sum_k p_k v_k of the renormalized label distribution",
        "scale": scale.name, "labels": list(scale.labels), "values": list(scale.values),
        "label_tokens": [list(t) for t in label_set.token_ids], "label_terminator": label_set.terminator,
        "pair_labels": list(pairs_lib.CHOICE_LABELS), "seed": seed, "n_resamples": n_resamples,
        "interval": "95% percentile bootstrap (items for single, questions for pairwise: a pair counts "
                    "count[A] * count[B] times)",
        "datasets": {},
    }
    for name, (role, questions, items) in prepared.items():
        fingerprint = _fingerprint(questions, items, scale, n_pairs=pairs_of[name], seed=seed, n_resamples=n_resamples,
                                   verbalized=verbalized, tag=tag, layout=EVAL_LAYOUT)
        done_path = out_dir / f"{name}.metrics.json"
        if resume:
            reused = multihost.leader_value(lambda: _finished_entry(out_dir, name, fingerprint, role))
            if reused is not None:
                log.info("eval %s: already scored with the same inputs, reusing %s", name, done_path)
                result["datasets"][name] = reused
                continue
        t0 = time.perf_counter()
        entry, rows = _evaluate_dataset(model, tokenizer, name, role, questions, items, scale, pair_set,
                                        n_pairs=pairs_of[name], seed=seed, batch_size=batch_size, n_resamples=n_resamples,
                                        verbalized=verbalized, sampler=sampler, mesh=mesh,
                                        max_new_tokens=verbalized_max_new_tokens, progress=progress)
        entry["seconds"] = time.perf_counter() - t0
        entry = artifacts.json_ready(entry)

        def write_dataset(name=name, rows=rows, entry=entry, done_path=done_path, fingerprint=fingerprint):
            # The rows file first, then its metrics: a kill between the two must not leave an older
            # <name>.metrics.json beside these rows for a later run to pair with them.
            done_path.unlink(missing_ok=True)
            artifacts.write_jsonl(out_dir / f"{name}.jsonl", rows)
            artifacts.write_json(done_path, {"fingerprint": fingerprint, "entry": entry}, indent=None)
            return entry

        # Every process scored its share and holds every row; process 0 writes (its entry is everyone's).
        entry = multihost.leader_value(write_dataset)
        result["datasets"][name] = entry
        log.info("eval %s: %d items, %d pairs, %.1fs", name, len(questions), entry["pairwise"]["n"],
                 entry["seconds"])
    result = artifacts.json_ready(result)
    multihost.leader_value(lambda: artifacts.write_json(out_dir / "metrics.json", result))
    return result


def _finished_entry(out_dir: Path, name: str, fingerprint: str, role: str) -> dict[str, Any] | None:
    """The entry of a dataset already scored with the same inputs (both its files present), else None."""
    done_path = out_dir / f"{name}.metrics.json"
    if not (done_path.is_file() and (out_dir / f"{name}.jsonl").is_file()):
        return None
    done = json.loads(done_path.read_text(encoding="utf-8"))
    if done.get("fingerprint") == fingerprint and done.get("entry", {}).get("role") == role:
        return done["entry"]
    return None


def _fingerprint(questions, items, scale, **settings) -> str:
    """Hash of everything a dataset's eval output depends on, besides the model weights (`tag` names those)."""
    payload = {"scale": [scale.name, list(scale.labels), list(scale.values)], "settings": settings,
               "ece": metrics.ECE_DEFINITION,
               "items": [[q.id, it["answer"], it["correct"], it["consistency"]] for q, it in zip(questions, items)]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _evaluate_dataset(model, tokenizer, name, role, questions, items, scale, pair_set, *, n_pairs, seed,
                      batch_size, n_resamples, verbalized, sampler, mesh, max_new_tokens, progress):
    answers = [it["answer"] for it in items]
    correct = np.asarray([it["correct"] for it in items], np.float64)
    consistency = np.asarray([it["consistency"] for it in items], np.float64)
    scored = scoring.score_single(model, tokenizer, questions, answers, scale, batch_size, mesh=mesh,
                                  progress=progress)
    conf = metrics.validate_confidences([s["expected"] for s in scored], f"{name}: expected confidence")
    argmax_conf = np.asarray([s["argmax_value"] for s in scored], np.float64)
    entry: dict[str, Any] = {
        "role": role, "n": len(questions),
        "splits": {s: sum(q.split == s for q in questions) for s in sorted({q.split for q in questions})},
        "single": {"n": len(questions), "n_correct": int(correct.sum()), "n_wrong": int(len(correct) - correct.sum()),
                   "mean_label_mass": float(np.mean([s["label_mass"] for s in scored])),
                   # Who graded the answers scored here (data/graders.py): rule:<name> or judge:<model>.
                   "graded_by": dict(sorted(collections.Counter(it["grader"] for it in items).items())),
                   "metrics": _with_intervals(single_metric_fn, (conf, correct), n_resamples, seed)},
        "single_argmax": {"n": len(questions),
                          "metrics": _with_intervals(single_metric_fn, (argmax_conf, correct), n_resamples, seed)},
    }
    rows = []
    for q, it, s in zip(questions, items, scored):
        rows.append({"task": "single", "id": q.id, "prompt_tokens": s["prompt_tokens"], "answer": it["answer"],
                     "correct": it["correct"], "consistency": it["consistency"], "modal_correct": it["modal_correct"],
                     "expected": s["expected"], "argmax_label": s["argmax_label"], "argmax_value": s["argmax_value"],
                     "label_mass": s["label_mass"], "distribution": s["distribution"]})

    # Pairwise: random pairs, each scored in both orders; the listed order (A, B) is a seeded coin, which
    # is also the single presentation the raw readout uses.
    index_pairs = pairs_lib.evaluation_pairs(len(questions), n_pairs, seed)
    shown = []
    for a, b in index_pairs:
        q1, _, _ = pairs_lib.order_pair(questions[a], questions[b], True, seed,
                                        f"{questions[a].id}|{questions[b].id}")
        shown.append((a, b) if q1 is questions[a] else (b, a))
    pairs = [(questions[i], questions[j]) for i, j in shown]
    if pairs:
        both = pairs + [(q2, q1) for q1, q2 in pairs]
        prefixes = [scoring.pairwise_prefix(tokenizer, q1, q2) for q1, q2 in both]
        probs, mass = scoring.score_labels(model, tokenizer, prefixes, pair_set.token_ids, batch_size, mesh=mesh,
                                           return_mass=True, progress=progress)
        p_ab, p_ba = probs[:len(pairs), 0], probs[len(pairs):, 0]
        p_tilde = np.asarray(debiased_preference(p_ab, p_ba))
        i1, i2 = np.asarray([i for i, _ in shown]), np.asarray([j for _, j in shown])
        # Per-question scores from the pairwise preferences (METHOD.md): a Bradley-Terry fit of p~.
        fit = bradley_terry.fit_strengths(i1, i2, p_tilde, len(questions))
        strength, pair_weight = np.asarray(fit.strength, np.float64), np.asarray(fit.pair_weight, np.float64)
        operands = (i1, i2, p_ab, p_ba, consistency, correct, strength, pair_weight)
        counts = dict(n=len(pairs), n_questions=len(questions),
                      n_consistency_differs=int(np.sum(consistency[i1] != consistency[i2])),
                      n_mixed=int(np.sum(correct[i1] != correct[i2])), mean_label_mass=float(np.mean(mass)))
        n_unpaired = int(np.sum(pair_weight == 0))
        entry["pairwise"] = dict(
            counts, n_questions_without_pairs=n_unpaired,
            readout="debiased p~ = 1/2 [P(Q1 | A, B) + 1 - P(Q1 | B, A)]",
            bradley_terry="strengths fit to p~ (ridge l2=%g); bt_* metrics score questions by strength" % (
                bradley_terry.DEFAULT_L2),
            metrics=bootstrap.bootstrap_clustered(pairwise_cluster_stat, len(questions), operands,
                                                  n_resamples, seed))
        entry["pairwise_raw"] = dict(
            counts, readout="P(Q1) of one presentation in a seeded random order",
            metrics=bootstrap.bootstrap_clustered(raw_pairwise_cluster_stat, len(questions),
                                                  (i1, i2, p_ab, consistency, correct), n_resamples, seed))
        for row, s, pw in zip((r for r in rows if r["task"] == "single"), strength, pair_weight):
            row["bt_strength"], row["bt_pairs"] = float(s), float(pw)
        for k, (i, j) in enumerate(shown):
            higher = None if consistency[i] == consistency[j] else ("Q1" if consistency[i] > consistency[j] else "Q2")
            rows.append({"task": "pairwise", "ids": [questions[i].id, questions[j].id],
                         "prompt_tokens": len(prefixes[k]), "p_q1": p_ab[k], "p_q1_swapped": p_ba[k],
                         "p_tilde": p_tilde[k], "label_mass": mass[k], "label_mass_swapped": mass[len(pairs) + k],
                         "consistency": [consistency[i], consistency[j]], "correct": [bool(correct[i]),
                                                                                     bool(correct[j])],
                         "higher_consistency": higher})
    else:
        for block in ("pairwise", "pairwise_raw"):
            entry[block] = {"n": 0, "n_questions": len(questions), "n_consistency_differs": 0, "n_mixed": 0,
                            "metrics": {}, "note": "fewer than two questions: no pairs"}

    if verbalized:
        _add_verbalized(entry, rows, sampler, questions, answers, correct, consistency, scale, shown, pairs,
                        n_resamples, seed, max_new_tokens)
    return entry, rows


def _add_verbalized(entry, rows, sampler, questions, answers, correct, consistency, scale, shown, pairs,
                    n_resamples, seed, max_new_tokens):
    single = scoring.verbalized_single(sampler, questions, answers, scale, max_new_tokens)
    ok = np.asarray([v is not None for v in single.values])
    block: dict[str, Any] = {"n": len(questions), "n_parse_failures": single.n_failures, "metrics": {}}
    if ok.any():
        vals = np.asarray([v for v in single.values if v is not None], np.float64)
        block["metrics"] = _with_intervals(single_metric_fn, (vals, correct[ok]), n_resamples, seed)
    entry["verbalized_single"] = block
    single_rows = [r for r in rows if r["task"] == "single"]
    for r, v, t in zip(single_rows, single.values, single.texts):
        r["verbalized"] = {"text": t, "value": v}
    pair_block: dict[str, Any] = {"n": len(pairs), "n_parse_failures": 0, "metrics": {}}
    if pairs:
        choice = scoring.verbalized_pairwise(sampler, pairs, max_new_tokens=4)
        pair_block["n_parse_failures"] = choice.n_failures
        keep = [k for k, v in enumerate(choice.values) if v is not None]
        if keep:
            i1 = np.asarray([shown[k][0] for k in keep])
            i2 = np.asarray([shown[k][1] for k in keep])
            p = np.asarray([choice.values[k] for k in keep], np.float64)
            pair_block["metrics"] = _with_intervals(
                pairwise_metric_fn, (p, consistency[i1], consistency[i2], correct[i1], correct[i2]), n_resamples, seed)
        pair_rows = [r for r in rows if r["task"] == "pairwise"]
        for r, v, t in zip(pair_rows, choice.values, choice.texts):
            r["verbalized"] = {"text": t, "p_q1": v}
    entry["verbalized_pairwise"] = pair_block


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Load an eval stage's metrics.json (or the one inside a directory), with a clear error if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json; run the eval stage first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
