"""Graders: a rule, an LLM judge, or the rule with the judge for what it leaves undecided; grading as a stage.

``config.grading`` chooses how every answer is graded (the samples' K answers and greedy answer, and a
fine-tuned model's greedy answers at evaluation):

* ``mode="rule"``: the rules of ``data/grading.py`` (open answers by ``open_rule``: containment, exact or
  f1 with ``f1_threshold``; the other kinds by their extraction rules).
* ``mode="judge"``: answers of the kinds in ``judge_kinds`` (default open only) are graded by the LLM
  judge (``data/judge.py``); where it says neither yes nor no, the rule decides.
* ``mode="rule_then_judge"``: the rule decides where it is sure and the judge is asked only where it is
  not. Undecided for the rule: an open answer the rule calls wrong that still shares a word with a gold
  alias (a partial or hedged match), and any answer with nothing the rule can parse.

Each graded answer records who decided (``"grader"``: ``rule:<name>`` or ``judge:<model>``), each sample
line the grader's settings (``"grading"``), and :func:`regrade_samples` re-grades a cached samples file
with another grader (``metacog grade``), rewriting answers, consistency and modal correctness without
re-sampling. :func:`compare_graders` measures how two graders agree on a samples file (Cohen's kappa with
a bootstrap interval over questions).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metacog_jax.data import grading
from metacog_jax.data.records import KINDS, Question

log = logging.getLogger(__name__)

MODES = ("rule", "judge", "rule_then_judge")
# What the rule is called for each kind in the records ("rule:containment" for an open answer).
_KIND_RULES = {"multiple_choice": "choice", "numeric": "numeric", "label": "label"}

# A judge: verdicts for (question, response) pairs, None where it is undecided.
JudgeFn = Callable[[Sequence[tuple[Question, str]]], list]


@dataclasses.dataclass(frozen=True)
class Graded:
    """One graded answer: the normalized answer, its correctness and who decided it."""

    normalized: str | None
    correct: bool
    grader: str


@dataclasses.dataclass(frozen=True)
class GradingSettings:
    """The ``config.grading`` section, checked (see module docstring)."""

    mode: str = "rule"
    open_rule: str = grading.DEFAULT_OPEN_RULE
    f1_threshold: float = 0.5
    judge: str = ""  # the judge's name (model spec); "" when mode is "rule"
    judge_kinds: tuple[str, ...] = ("open",)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"grading mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.open_rule not in grading.OPEN_RULES:
            raise ValueError(f"grading open_rule {self.open_rule!r}; choose one of {', '.join(grading.OPEN_RULES)}")
        if not 0.0 < self.f1_threshold <= 1.0:
            raise ValueError(f"grading f1_threshold={self.f1_threshold} must be in (0, 1]")
        unknown = [k for k in self.judge_kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"grading judge_kinds {unknown} are not question kinds ({', '.join(KINDS)})")
        if self.mode != "rule" and not self.judge:
            raise ValueError(f"grading mode {self.mode!r} needs a judge model")

    def fingerprint(self) -> dict[str, Any]:
        """What a samples line records about its grading (a re-grade with other settings differs)."""
        out: dict[str, Any] = {"mode": self.mode, "open_rule": self.open_rule}
        if self.open_rule == "f1":
            out["f1_threshold"] = self.f1_threshold
        if self.mode != "rule":
            out.update(judge=self.judge, judge_kinds=list(self.judge_kinds))
        return out

    def name(self) -> str:
        """A short name for reports: ``containment``, ``judge:<model>``, ``containment+judge:<model>``."""
        rule = self.open_rule if self.open_rule != "f1" else f"f1>={self.f1_threshold:g}"
        if self.mode == "rule":
            return rule
        if self.mode == "judge":
            return f"judge:{self.judge}"
        return f"{rule}+judge:{self.judge}"


class Grader:
    """Grades (question, response) pairs under :class:`GradingSettings`, asking ``judge`` in batches.

    Args:
      settings: the grading settings.
      judge: verdicts for a list of (question, response) pairs (an :class:`~metacog_jax.data.judge.LLMJudge`);
        required unless ``settings.mode == "rule"``.
    """

    def __init__(self, settings: GradingSettings | None = None, judge: JudgeFn | None = None):
        self.settings = settings or GradingSettings()
        if self.settings.mode != "rule" and judge is None:
            raise ValueError(f"grading mode {self.settings.mode!r} needs a judge")
        self.judge = judge

    def rule_name(self, kind: str) -> str:
        return "rule:" + (self.settings.open_rule if kind == "open" else _KIND_RULES[kind])

    def rule(self, question: Question, normalized: str | None) -> bool:
        """The rule's verdict on an already-normalized answer (a modal answer, say)."""
        s = self.settings
        return grading.is_correct(question, normalized, rule=s.open_rule, f1_threshold=s.f1_threshold)

    def _undecided(self, question: Question, normalized: str | None, correct: bool) -> bool:
        """Whether the rule leaves this answer to the judge in mode ``rule_then_judge``."""
        if correct:
            return False
        if normalized is None:
            return True
        if question.kind != "open":
            return False
        words = set(normalized.split())
        return any(words & set(grading.normalize_text(a).split()) for a in question.answers)

    def grade_many(self, items: Sequence[tuple[Question, str]], progress: bool = False) -> list[Graded]:
        """Graded answers for ``items``, in order; the judge is asked once, batched, for every pair it
        has to see."""
        s = self.settings
        out: list[Graded] = []
        ask: list[int] = []
        for i, (q, text) in enumerate(items):
            normalized = grading.extract_answer(q, text)
            correct = self.rule(q, normalized)
            out.append(Graded(normalized, correct, self.rule_name(q.kind)))
            if s.mode != "rule" and q.kind in s.judge_kinds and (
                    s.mode == "judge" or self._undecided(q, normalized, correct)):
                ask.append(i)
        if ask:
            verdicts = self.judge([items[i] for i in ask], progress=progress)
            for i, verdict in zip(ask, verdicts):
                if verdict is not None:
                    out[i] = Graded(out[i].normalized, bool(verdict), f"judge:{s.judge}")
        return out


# -- sample lines ---------------------------------------------------------------------------------------
def graded_fields(question: Question, texts: Sequence[str], greedy_text: str | None,
                  graded: Sequence[Graded], settings: GradingSettings) -> dict[str, Any]:
    """The graded part of a sample line from the grades of its K texts (and greedy text, last).

    The modal answer is the most common normalized answer (``grading.modal_answer``); its correctness is
    the grade of the first sample that gave it, so a judge's verdict carries over to the modal answer.
    """
    k = len(texts)
    if not k:
        raise ValueError(f"question {question.id!r}: no samples to grade")
    if len(graded) != k + (greedy_text is not None):
        raise ValueError(f"question {question.id!r}: {len(graded)} grades for {k} samples"
                         f"{' and a greedy answer' if greedy_text is not None else ''}")
    samples = graded[:k]
    modal, count = grading.modal_answer(question, [g.normalized for g in samples])
    modal_correct = False
    if modal is not None:
        first = next(g for g in samples if grading.answers_equal(question, g.normalized, modal))
        modal_correct = first.correct
    greedy = None
    if greedy_text is not None:
        g = graded[k]
        greedy = {"text": greedy_text, "answer": g.normalized, "correct": g.correct, "grader": g.grader}
    return {
        "samples": [{"text": t, "answer": g.normalized, "correct": g.correct, "grader": g.grader}
                    for t, g in zip(texts, samples)],
        "modal_answer": modal,
        "modal_count": count,
        "consistency": count / k,
        "modal_correct": modal_correct,
        "greedy": greedy,
        "grading": settings.fingerprint(),
    }


def grade_lines(grader: Grader, rows: Sequence[tuple[Question, Sequence[str], str | None]],
                progress: bool = False) -> list[dict[str, Any]]:
    """:func:`graded_fields` of each (question, K sample texts, greedy text or None), with one
    ``grade_many`` call for all of them (so a judge sees every answer in one batched run)."""
    items, spans = [], []
    for q, texts, greedy_text in rows:
        spans.append(len(items))
        items += [(q, t) for t in texts] + ([(q, greedy_text)] if greedy_text is not None else [])
    graded = grader.grade_many(items, progress=progress)
    return [graded_fields(q, texts, greedy_text, graded[start:start + len(texts) + (greedy_text is not None)],
                          grader.settings)
            for (q, texts, greedy_text), start in zip(rows, spans)]


def _texts(record: Mapping[str, Any]) -> tuple[list[str], str | None]:
    greedy = record.get("greedy")
    return [s["text"] for s in record["samples"]], (greedy["text"] if greedy else None)


def decided_by(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many graded answers (samples and greedy) each grader decided; ``unrecorded`` for old lines."""
    counts: collections.Counter[str] = collections.Counter()
    for r in records:
        for s in [*r["samples"], *([r["greedy"]] if r.get("greedy") else [])]:
            counts[s.get("grader", "unrecorded")] += 1
    return dict(sorted(counts.items()))


def regrade_samples(path: str | os.PathLike[str], questions: Mapping[str, Question], grader: Grader, *,
                    progress: bool = False) -> dict[str, Any]:
    """Re-grades a samples file with ``grader`` and rewrites it atomically; nothing is re-sampled.

    A file whose every line already carries ``grader``'s settings is left alone (a resumed ``metacog
    grade`` skips it); judge verdicts are cached (``data/judge.py``), so a killed run asks again only for
    the answers it had not judged yet.

    Returns:
      A summary: questions, answers graded, greedy and modal accuracy before and after, how many greedy
      and sample grades changed, and :func:`decided_by` after.
    """
    from metacog_jax import multihost
    from metacog_jax.artifacts import write_jsonl
    from metacog_jax.data.self_consistency import read_samples

    path = Path(path)
    # Several processes: all grade from process 0's reading (the judge's model calls are divided between
    # them by its sampler; the rules are cheap host work done alike on each) and process 0 writes.
    records = multihost.leader_value(lambda: read_samples(path))
    fingerprint = grader.settings.fingerprint()
    summary: dict[str, Any] = {"path": str(path), "questions": len(records), "grading": grader.settings.name()}
    if all(r.get("grading") == fingerprint for r in records):
        return dict(summary, skipped="already graded with these settings", decided_by=decided_by(records))
    missing = [r["id"] for r in records if r["id"] not in questions]
    if missing:
        raise ValueError(f"{path}: no question record for ids {missing[:5]} (the questions file beside it "
                         "lost them?)")
    rows = [(questions[r["id"]], *_texts(r)) for r in records]
    new = [{**r, **fields} for r, fields in zip(records, grade_lines(grader, rows, progress))]

    def share(rs, pick):
        vals = [pick(r) for r in rs if pick(r) is not None]
        return sum(vals) / len(vals) if vals else None

    greedy_correct = lambda r: r["greedy"]["correct"] if r.get("greedy") else None
    summary.update(
        answers=sum(len(texts) + (greedy is not None) for _, texts, greedy in rows),
        greedy_accuracy_before=share(records, greedy_correct), greedy_accuracy=share(new, greedy_correct),
        modal_accuracy_before=share(records, lambda r: r["modal_correct"]),
        modal_accuracy=share(new, lambda r: r["modal_correct"]),
        greedy_changed=sum(greedy_correct(a) != greedy_correct(b) for a, b in zip(records, new)),
        samples_changed=sum(s["correct"] != t["correct"] for a, b in zip(records, new)
                            for s, t in zip(a["samples"], b["samples"])),
        decided_by=decided_by(new))
    multihost.leader_value(lambda: write_jsonl(path, new))
    return summary


# -- agreement between two graders ------------------------------------------------------------------------
def _kappa_stat(counts, a, b, cluster):
    from metacog_jax.evaluation import metrics

    w = counts[cluster]
    return {"kappa": metrics.cohen_kappa(a, b, w), "agreement": metrics.accuracy(a == b, w),
            "accuracy_a": metrics.accuracy(a, w), "accuracy_b": metrics.accuracy(b, w)}


def compare_graders(records: Sequence[Mapping[str, Any]], questions: Mapping[str, Question], a: Grader,
                    b: Grader, *, which: str = "all", n_resamples: int = 1000, seed: int = 0,
                    progress: bool = False) -> dict[str, Any]:
    """How two graders agree on the answers of sample lines: Cohen's kappa, raw agreement and each one's
    accuracy, with 95% bootstrap intervals over questions (a question's answers are resampled together).

    Args:
      records: sample lines (``self_consistency.read_samples``).
      questions: their Question records by id.
      a, b: the two graders.
      which: ``"all"`` (every sample and greedy answer), ``"greedy"`` or ``"samples"``.

    Returns:
      ``{"n_questions", "n_answers", "table": {"both_right", "a_only", "b_only", "both_wrong"},
      "kappa": {estimate, low, high, ...}, "agreement", "accuracy_a", "accuracy_b"}``.
    """
    import numpy as np

    from metacog_jax.evaluation import bootstrap

    if which not in ("all", "greedy", "samples"):
        raise ValueError(f"which must be 'all', 'greedy' or 'samples', got {which!r}")
    items, cluster = [], []
    for i, r in enumerate(records):
        q = questions[r["id"]]
        texts, greedy_text = _texts(r)
        chosen = ([] if which == "greedy" else texts) + (
            [greedy_text] if greedy_text is not None and which != "samples" else [])
        items += [(q, t) for t in chosen]
        cluster += [i] * len(chosen)
    if not items:
        raise ValueError(f"no {which} answers to compare")
    ya = np.array([g.correct for g in a.grade_many(items, progress=progress)], np.float32)
    yb = np.array([g.correct for g in b.grade_many(items, progress=progress)], np.float32)
    stats = bootstrap.bootstrap_clustered(_kappa_stat, len(records), (ya, yb, np.asarray(cluster, np.int32)),
                                          n_resamples=n_resamples, seed=seed)
    table = {"both_right": int(((ya == 1) & (yb == 1)).sum()), "a_only": int(((ya == 1) & (yb == 0)).sum()),
             "b_only": int(((ya == 0) & (yb == 1)).sum()), "both_wrong": int(((ya == 0) & (yb == 0)).sum())}
    return {"a": a.settings.name(), "b": b.settings.name(), "which": which, "n_questions": len(records),
            "n_answers": len(items), "table": table, **stats}


# -- from a config ------------------------------------------------------------------------------------------
def judge_name(c) -> str:
    """The judge's model spec: ``grading.judge`` (a preset name resolves to its spec), or the config's own
    model when it is empty."""
    from metacog_jax.experiment_config import MODEL_PRESETS

    spec = c.grading.judge or c.model.name
    return MODEL_PRESETS[spec][0] if spec in MODEL_PRESETS else spec


def settings_from_config(c, spec: str | None = None) -> GradingSettings:
    """:class:`GradingSettings` from ``config.grading``, or from a grader ``spec`` with the config's judge:
    ``containment``, ``exact``, ``f1`` or ``f1:0.6`` (a rule), ``judge``, ``rule_then_judge``, or ``config``
    (the config's own settings).

    Raises:
      ValueError: an unknown spec or setting, naming it.
    """
    g = c.grading
    fields = dict(mode=g.mode, open_rule=g.open_rule, f1_threshold=float(g.f1_threshold),
                  judge_kinds=tuple(g.judge_kinds))
    if spec is not None and spec != "config":
        name, _, threshold = spec.partition(":")
        if name in grading.OPEN_RULES:
            fields.update(mode="rule", open_rule=name)
            if threshold:
                if name != "f1":
                    raise ValueError(f"grader {spec!r}: only f1 takes a threshold (f1:0.6)")
                try:
                    fields["f1_threshold"] = float(threshold)
                except ValueError:
                    raise ValueError(f"grader {spec!r}: {threshold!r} is not a number") from None
        elif name in ("judge", "rule_then_judge") and not threshold:
            fields["mode"] = name
        else:
            raise ValueError(f"unknown grader {spec!r}; choose one of {', '.join(grading.OPEN_RULES)}, f1:<threshold>, "
                             "judge, rule_then_judge or config")
    fields["judge"] = judge_name(c) if fields["mode"] != "rule" else ""
    return GradingSettings(**fields)


def make_grader(c, data_workdir: str | os.PathLike[str], settings: GradingSettings | None = None,
                model=None) -> Grader:
    """The grader of ``settings`` (default: ``config.grading``), its judge loaded when it needs one.

    Args:
      c: the experiment config.
      data_workdir: where the verdict cache lives (``<data>/grading/judge_cache.jsonl`` unless
        ``grading.judge_cache`` names a file).
      settings: grading settings; None reads them from the config.
      model: the config's own model, already loaded (a ``LoadedModel``): the judge reuses it when
        ``grading.judge`` is empty, instead of loading it again.
    """
    from metacog_jax.data.judge import LLMJudge

    settings = settings or settings_from_config(c)
    if settings.mode == "rule":
        return Grader(settings)
    g = c.grading
    if model is None or g.judge:
        from metacog_jax.models.build import build_model
        from metacog_jax.models.loading import load_model

        if g.judge:
            model = load_model(settings.judge, dtype=c.model.dtype, param_dtype=c.model.param_dtype)
        else:
            model = build_model(c)
    from metacog_jax.sampling import Sampler

    cache = Path(g.judge_cache) if g.judge_cache else Path(data_workdir) / "grading" / "judge_cache.jsonl"
    sampler = Sampler(model.model, model.tokenizer, batch_size=g.judge_batch_size)
    judge = LLMJudge(settings.judge, sampler, cache_path=cache, max_new_tokens=g.judge_max_new_tokens,
                     chunk_size=4 * g.judge_batch_size)
    return Grader(settings, judge)
