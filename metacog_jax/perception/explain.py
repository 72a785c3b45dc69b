"""Paper 2: build the items file of the rating study — questions, the model's answers, its internal
confidence and its explanations in every style (`metacog explain`).

Flow of :func:`run_explain`:
  1. load a pool of ``explain.pool_size`` test-split questions of one domain;
  2. internal confidence (``internal_confidence``): multiple choice -> option-letter probabilities
     renormalized over the options (answer = arg-max letter); other kinds -> the greedy answer to the
     answer prompt, graded, then P(True) of that answer;
  3. pick ``n`` items balanced across ``explain.n_bins`` equal-width confidence bins
     (``explanations.stratified_order``);
  4. generate the default explanation and the 9 modified styles for each (greedy, second turn);
     an item with an empty explanation in any style is replaced by the next item of the stratified order
     (the study cannot show an empty explanation, and model text is never edited);
  5. mark ``selected_style`` by the rule (``explain.theta1``/``theta2``, ``explain.selected_length``);
  6. write ``<workdir>/explain/items.jsonl`` in the study's items format (validated with
     ``study.load_items`` before it replaces any earlier file) and ``summary.json`` with the per-item
     details the items format has no field for (option probabilities, raw greedy answers).

Resuming: every confidence (step 2) and every explanation (step 4) is appended to
``<workdir>/explain/cache.jsonl`` as soon as it is made (``explanations.ResultCache``; fsynced, by
process 0), keyed by the model (:func:`model_identity`) and everything else the result depends on. A run
killed part-way and started again reads the cache, computes only what is missing (in the batches an
uninterrupted run makes) and writes the same items file; a run with other settings (model, prompts,
templates, budgets, batch size) misses the old entries and computes afresh.

Several processes: the pool is loaded by process 0 and shared; the model calls of steps 2 and 4 divide
their batches between the processes (``metacog_jax.multihost``); process 0 writes every file.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from metacog_jax import artifacts, multihost
from metacog_jax.data.grading import grade, is_correct
from metacog_jax.data.records import Question
from metacog_jax.perception import explanations as expl
from metacog_jax.perception import internal_confidence as ic
from metacog_jax.perception import study

log = logging.getLogger(__name__)

_ANSWER_LEAD = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)


def question_text(q: Question) -> str:
    """The question as a participant reads it: context (if any), then the question (options apart)."""
    return f"{q.context.strip()}\n\n{q.question.strip()}" if q.context.strip() else q.question.strip()


def display_answer(response: str, normalized: str | None) -> str:
    """A short-answer response as shown to people and to the P(True) prompt: its first line without a
    leading "The answer is" and a trailing period; the normalized answer when nothing is left, and
    "no answer" when the model gave none."""
    first = response.strip().split("\n", 1)[0] if response.strip() else ""
    shown = _ANSWER_LEAD.sub("", first).strip().rstrip(".").strip()
    return shown or (normalized or "no answer")


_CONFIDENCE_FIELDS = ("model_answer", "normalized", "correct", "model_confidence", "method", "details")


def model_identity(config) -> str:
    """What determines the model's weights and numerics, as JSON: the ``model`` section (without the
    random-model fields and tokenizer unless ``model.name`` is "random", where ``seed`` is added), for
    the explain cache's keys."""
    ident = artifacts.json_ready(config.model.to_dict())
    ident.pop("preset", None)
    if ident.get("name") == "random":
        ident["seed"] = int(config.seed)
    else:
        ident.pop("random", None)
        ident.pop("tokenizer", None)
    return json.dumps(ident, sort_keys=True, ensure_ascii=False)


def _confidence_key(cache: expl.ResultCache, tokenizer, q: Question, batch_size: int,
                    max_new_tokens_answer: int) -> str:
    from metacog_jax.data import prompts

    return cache.key("confidence", batch_size, max_new_tokens_answer, q.id, q.kind, list(q.answers),
                     list(q.labels), prompts.answer_prompt(tokenizer, q), ic.MC_ANSWER_PREFIX,
                     ic.P_TRUE_INSTRUCTION, ic.P_TRUE_PREFIX)


def internal_confidences(model, tokenizer, questions: Sequence[Question], *, batch_size: int,
                         max_new_tokens_answer: int, cache: expl.ResultCache | None = None) -> list[dict[str, Any]]:
    """Answer, correctness and internal confidence for each question (multiple choice via option-letter
    probabilities, other kinds via greedy answer + P(True)).

    The model calls (option-letter scoring, greedy answers, P(True)) each take all the questions at once,
    so with several processes their batches are divided between them. Questions whose result is in
    `cache` are not computed again; the others' results are added to it (one append).

    Returns:
      One dict per question, in order: ``question``, ``model_answer`` (display text), ``normalized``,
      ``correct`` (bool), ``model_confidence`` (float in [0, 1]), ``method`` ("option_probs" or
      "p_true") and ``details`` (JSON-ready: option_probs/option_mass, or greedy_text).
    """
    cache = cache if cache is not None else expl.ResultCache(None)
    keys = [_confidence_key(cache, tokenizer, q, batch_size, max_new_tokens_answer) for q in questions]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    cache.reused["confidence"] += len(questions) - len(todo)
    fresh = _compute_confidences(model, tokenizer, [questions[i] for i in todo], batch_size=batch_size,
                                 max_new_tokens_answer=max_new_tokens_answer)
    cache.add([{"key": keys[i], "kind": "confidence", "item_id": questions[i].id,
                **artifacts.json_ready({f: r[f] for f in _CONFIDENCE_FIELDS})}
               for i, r in zip(todo, fresh) if keys[i] not in cache])
    return [dict(question=q, **{f: cache[k][f] for f in _CONFIDENCE_FIELDS}) for q, k in zip(questions, keys)]


def _compute_confidences(model, tokenizer, questions: Sequence[Question], *, batch_size: int,
                         max_new_tokens_answer: int) -> list[dict[str, Any]]:
    """:func:`internal_confidences` without the cache."""
    from metacog_jax.data import prompts
    from metacog_jax.sampling import Sampler, SamplingParams

    out: list[dict[str, Any] | None] = [None] * len(questions)
    mc = [i for i, q in enumerate(questions) if q.kind == "multiple_choice"]
    other = [i for i, q in enumerate(questions) if q.kind != "multiple_choice"]
    if mc:
        results = ic.mc_confidence(model, tokenizer, [questions[i] for i in mc], batch_size)
        for i, r in zip(mc, results):
            q = questions[i]
            out[i] = dict(question=q, model_answer=r["answer"], normalized=r["answer"],
                          correct=is_correct(q, r["answer"]), model_confidence=r["confidence"],
                          method="option_probs",
                          details=dict(option_probs=[float(x) for x in r["option_probs"]],
                                       option_mass=r["option_mass"]))
    if other:
        import jax

        qs = [questions[i] for i in other]
        sampler = Sampler(model, tokenizer, batch_size=batch_size)
        ids = [tokenizer.encode(prompts.answer_prompt(tokenizer, q), add_special_tokens=False) for q in qs]
        gen = sampler.generate(ids, SamplingParams(max_new_tokens=max_new_tokens_answer, temperature=0.0),
                               jax.random.key(0))
        texts = [row[0].text for row in gen.completions]
        grades = [grade(q, t) for q, t in zip(qs, texts)]
        shown = [display_answer(t, g.normalized) for t, g in zip(texts, grades)]
        conf = ic.p_true(model, tokenizer, qs, shown, batch_size)
        for i, q, t, g, a, c in zip(other, qs, texts, grades, shown, conf):
            out[i] = dict(question=q, model_answer=a, normalized=g.normalized, correct=g.correct,
                          model_confidence=float(np.clip(c, 0.0, 1.0)), method="p_true",
                          details=dict(greedy_text=t))
    return out  # type: ignore[return-value]


def _check_explain_config(c) -> dict[str, str]:
    e = c.explain
    expl.select_style(0.5, e.theta1, e.theta2, e.selected_length)  # raises on bad thresholds / length
    for name in ("max_new_tokens_long", "max_new_tokens_short", "max_new_tokens_answer", "n_bins", "pool_size",
                 "batch_size"):
        if int(e[name]) < 1:
            raise ValueError(f"config explain.{name}={e[name]} must be >= 1")
    return expl.check_templates(e.templates.to_dict())


def _write_items_atomic(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write the items as JSONL beside `path`, validate them as a study items file, then rename."""
    with artifacts.atomic_output(path) as f:
        for r in records:
            f.write(json.dumps(artifacts.json_ready(r), ensure_ascii=False) + "\n")
        f.flush()
        study.load_items(f.name)


def run_explain(config, workdir: str | os.PathLike[str], domain: str = "mmlu_pro", n: int = 10) -> Path:
    """Build the paper-2 items file for `n` questions of `domain`; returns the items file's path.

    Args:
      config: experiment config with an ``explain`` section (configs/explain.py).
      workdir: output root; writes ``explain/items.jsonl`` and ``explain/summary.json`` (TFDS files go to
        ``data.tfds_dir`` or ``<workdir>/tfds``).
      domain: registry name (``data.sources.DOMAINS``); its test split is used.
      n: items wanted; fewer when the pool (``explain.pool_size``) runs out.

    Raises:
      ValueError: bad config values, n < 1, an empty pool, or no item whose explanations are all
        non-empty.
    """
    from metacog_jax.data.sources import load_questions, tfds_dir_for
    from metacog_jax.models.build import build_model
    from metacog_jax.sampling import Sampler

    t0 = time.perf_counter()
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    templates = _check_explain_config(config)
    e = config.explain
    workdir = Path(workdir)
    out_dir = workdir / "explain"
    pool_n = max(int(e.pool_size), n)
    # Several processes: process 0 loads (and may build TFDS files), every process gets the same pool; the
    # model calls below divide their batches between the processes and process 0 writes the files.
    questions = multihost.leader_value(lambda: load_questions(
        domain, config.data.manual_dir or None, tfds_dir_for(config, workdir), "test", n=pool_n, seed=config.seed,
        test_fraction=config.data.test_fraction, levels=tuple(config.data.procedural_levels),
        custom=config.data.get("custom")))
    if not questions:
        raise ValueError(f"domain {domain!r} has no test-split questions")
    log.info("explain: %d %s test questions in the pool; loading %s", len(questions), domain, config.model.name)
    loaded = build_model(config)
    # Finished confidences and explanations (process 0 reads the file, every process gets its contents).
    cache = expl.ResultCache(out_dir / "cache.jsonl", model_identity(config))
    if len(cache):
        log.info("explain: %s holds %d confidences and %d explanations of earlier runs (those of this "
                 "model and these settings are not computed again)", cache.path, cache.count("confidence"),
                 cache.count("explanation"))
    t_conf = time.perf_counter()
    pool = internal_confidences(loaded.model, loaded.tokenizer, questions, batch_size=int(e.batch_size),
                                max_new_tokens_answer=int(e.max_new_tokens_answer), cache=cache)
    t_conf = time.perf_counter() - t_conf
    log.info("explain: internal confidence of %d questions in %.1fs (%d from the cache)", len(pool), t_conf,
             cache.reused["confidence"])

    order = expl.stratified_order(pool, int(e.n_bins), config.seed)
    sampler = Sampler(loaded.model, loaded.tokenizer, batch_size=int(e.batch_size))
    chosen: dict[int, dict[str, str]] = {}
    dropped: list[str] = []
    cursor = 0
    t_gen = time.perf_counter()
    while len(chosen) < n and cursor < len(order):
        batch = order[cursor:cursor + n - len(chosen)]
        cursor += len(batch)
        texts = expl.generate_explanations(
            sampler, [pool[i]["question"] for i in batch], [pool[i]["model_answer"] for i in batch],
            expl.STYLE_NAMES, templates, max_new_tokens_long=int(e.max_new_tokens_long),
            max_new_tokens_short=int(e.max_new_tokens_short), progress=bool(e.progress), cache=cache)
        for i, t in zip(batch, texts):
            blank = [s for s in expl.STYLE_NAMES if not t[s]]
            if blank:
                log.warning("explain: %s dropped: empty explanation in styles %s", pool[i]["question"].id, blank)
                dropped.append(pool[i]["question"].id)
            else:
                chosen[i] = t
    t_gen = time.perf_counter() - t_gen
    if not chosen:
        raise ValueError(f"no {domain!r} item got a non-empty explanation in every style")

    records, details = [], []
    for i in sorted(chosen):
        item = pool[i]
        q = item["question"]
        selected = expl.select_style(item["model_confidence"], e.theta1, e.theta2, e.selected_length)
        records.append({
            "item_id": q.id,
            "question": question_text(q),
            "options": list(q.options),
            "model_answer": item["model_answer"],
            "correct": bool(item["correct"]),
            "model_confidence": float(item["model_confidence"]),
            "explanations": expl.explanation_record(chosen[i]),
            "selected_style": selected,
        })
        details.append(dict(item_id=q.id, method=item["method"], gold=list(q.answers),
                            normalized=item["normalized"], **item["details"]))
    items_path = out_dir / "items.jsonl"
    multihost.leader_value(lambda: _write_items_atomic(items_path, records))

    n_bins = int(e.n_bins)
    pool_bins = collections.Counter(expl.confidence_bin(p["model_confidence"], n_bins) for p in pool)
    sel_bins = collections.Counter(expl.confidence_bin(r["model_confidence"], n_bins) for r in records)
    summary = dict(
        domain=domain, model=config.model.name, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        n_requested=n, n_items=len(records), pool_size=len(pool), dropped_empty_explanation=dropped,
        theta1=float(e.theta1), theta2=float(e.theta2), selected_length=e.selected_length, n_bins=n_bins,
        pool_bin_counts=[pool_bins.get(b, 0) for b in range(n_bins)],
        selected_bin_counts=[sel_bins.get(b, 0) for b in range(n_bins)],
        pool_accuracy=float(np.mean([p["correct"] for p in pool])),
        pool_mean_confidence=float(np.mean([p["model_confidence"] for p in pool])),
        items_accuracy=float(np.mean([r["correct"] for r in records])),
        items_mean_confidence=float(np.mean([r["model_confidence"] for r in records])),
        # A small model often answers one letter regardless of the question (position bias); this shows it.
        pool_answer_counts=dict(collections.Counter(str(p["model_answer"]) for p in pool).most_common(10)),
        selected_style_counts=dict(collections.Counter(r["selected_style"] for r in records)),
        max_new_tokens=dict(long=int(e.max_new_tokens_long), short=int(e.max_new_tokens_short),
                            answer=int(e.max_new_tokens_answer)),
        templates=templates, details=details,
        # Results this run read from explain/cache.jsonl instead of computing them (0 in a fresh run).
        from_cache=dict(confidences=cache.reused["confidence"], explanations=cache.reused["explanation"]),
        seconds=dict(confidence=round(t_conf, 2), explanations=round(t_gen, 2),
                     total=round(time.perf_counter() - t0, 2)),
    )
    multihost.leader_value(lambda: artifacts.write_json(out_dir / "summary.json", summary))
    log.info("explain: wrote %d items to %s in %.1fs", len(records), items_path, time.perf_counter() - t0)
    return items_path
