"""Paper 2: explanation styles, the rule that picks one from the model's confidence, item selection
balanced over confidence bins, and the second-turn generation of explanations (METHOD.md, paper 2).

Styles (``STYLE_NAMES``, defined here; the study app imports them): "default" — "Provide an explanation for the answer you
gave. In your explanation, you must include the answer." — and the 3 x 3 modified styles
``{certainty}_{length}``: certainty not_sure / somewhat_sure / sure (the certainty the explanation
must express), length long (a full explanation), short (a very short explanation with as few words as
possible) or uncertainty_only (no explanation, only the certainty and the answer: "I am not sure the
answer is B."). Every template is a string with an ``{answer}`` placeholder; the defaults are
:func:`default_templates`, and a config may replace any of them (``configs/explain.py``).

Generation is a second turn of one conversation: [user: the answer prompt, assistant: "The answer is
X.", user: the style's instruction] -> greedy continuation. Default and long styles get
``max_new_tokens_long`` tokens, short and uncertainty_only styles ``max_new_tokens_short``.

Finished work is kept in a :class:`ResultCache` (``<workdir>/explain/cache.jsonl``, one JSON line per
result, appended and fsynced as it is made), so a killed ``metacog explain`` resumes without computing
again what it had finished. With several processes the generation batches are divided between them
(``metacog_jax.multihost``) and process 0 alone appends to the cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import string
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from metacog_jax.artifacts import KeyedLog
from metacog_jax.data import prompts
from metacog_jax.data.records import Question

if TYPE_CHECKING:  # the study app imports the style names below without loading JAX
    from metacog_jax.sampling import Sampler

T = TypeVar("T")

# The certainty an explanation must express, its length, and the 1 + 3 x 3 style names built from them.
CERTAINTY_LEVELS = ("not_sure", "somewhat_sure", "sure")
LENGTHS = ("long", "short", "uncertainty_only")
STYLE_NAMES = ("default",) + tuple(f"{c}_{n}" for c in CERTAINTY_LEVELS for n in LENGTHS)

DEFAULT_STYLE = "default"
# Defaults of the selection rule: p <= 0.4 "not sure", 0.4 < p <= 0.6 "somewhat sure", else "sure".
# METHOD.md leaves the thresholds to the config; these split the probability scale around 0.5
# symmetrically, so "sure" is said only when the model puts more than 60% on its answer.
DEFAULT_THETA1 = 0.4
DEFAULT_THETA2 = 0.6
SHORT_LENGTHS = ("short", "uncertainty_only")

_CERTAINTY_WORDS = {"not_sure": "not sure", "somewhat_sure": "somewhat sure", "sure": "sure"}
_DEFAULT_TEMPLATE = ("Provide an explanation for the answer you gave. In your explanation, you must "
                     "include the answer.")
_LENGTH_TEMPLATES = {
    "long": ("Write an explanation why you are {c} that the answer is {{answer}}. In your explanation, "
             "mention that you are {c} and include the answer. Start with 'I am'."),
    "short": ("Write a very short explanation, with as few words as possible, why you are {c} that the "
              "answer is {{answer}}. In your explanation, mention that you are {c} and include the "
              "answer. Start with 'I am'."),
    "uncertainty_only": ("Do not explain your answer. Only say, in one short sentence, that you are {c} "
                         "that the answer is {{answer}}, for example 'I am {c} the answer is {{answer}}.' "
                         "Start with 'I am'."),
}


def style_name(certainty: str, length: str) -> str:
    """"{certainty}_{length}", checked against STYLE_NAMES."""
    name = f"{certainty}_{length}"
    if name not in STYLE_NAMES:
        raise ValueError(f"no style {name!r}: certainty must be one of {CERTAINTY_LEVELS}, length one of {LENGTHS}")
    return name


def default_templates() -> dict[str, str]:
    """Style name -> instruction template (``{answer}`` is replaced by the model's answer), for every
    style in STYLE_NAMES."""
    out = {DEFAULT_STYLE: _DEFAULT_TEMPLATE}
    for certainty in CERTAINTY_LEVELS:
        for length in LENGTHS:
            out[style_name(certainty, length)] = _LENGTH_TEMPLATES[length].format(c=_CERTAINTY_WORDS[certainty])
    return out


def check_templates(templates: Mapping[str, str]) -> dict[str, str]:
    """The templates as a plain dict, after checking that every style has one, no unknown style is
    given, and each template's only placeholder is ``{answer}``.

    Raises:
      ValueError: naming the style and what is wrong.
    """
    templates = dict(templates)
    missing = [s for s in STYLE_NAMES if s not in templates]
    unknown = [s for s in templates if s not in STYLE_NAMES]
    if missing or unknown:
        raise ValueError(f"explanation templates: missing styles {missing}, unknown styles {unknown}; "
                         f"expected exactly {list(STYLE_NAMES)}")
    for style, text in templates.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"explanation template {style!r} must be a non-empty string")
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        bad = [f for f in fields if f != "answer"]
        if bad:
            raise ValueError(f"explanation template {style!r} has placeholders {bad}; only {{answer}} is filled "
                             "(write literal braces as {{ and }})")
    return templates


def instruction(templates: Mapping[str, str], style: str, answer: str) -> str:
    """The second-turn instruction of `style` for the model's `answer` (e.g. "B")."""
    if style not in templates:
        raise ValueError(f"no template for explanation style {style!r}")
    return templates[style].format(answer=answer)


def select_style(p: float, theta1: float = DEFAULT_THETA1, theta2: float = DEFAULT_THETA2,
                 length: str = "long") -> str:
    """The modified style whose expressed certainty matches model confidence `p` (METHOD.md):
    "not_sure" if p <= theta1, "somewhat_sure" if theta1 < p <= theta2, else "sure"; joined with `length`.

    Raises:
      ValueError: p outside [0, 1], thresholds not 0 <= theta1 <= theta2 <= 1, or an unknown length.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"model confidence p={p} is outside [0, 1]")
    if not 0.0 <= theta1 <= theta2 <= 1.0:
        raise ValueError(f"selection thresholds must satisfy 0 <= theta1 <= theta2 <= 1, got {theta1}, {theta2}")
    if length not in LENGTHS:
        raise ValueError(f"explanation length {length!r} is not one of {LENGTHS}")
    certainty = "not_sure" if p <= theta1 else "somewhat_sure" if p <= theta2 else "sure"
    return style_name(certainty, length)


def confidence_bin(p: float, n_bins: int) -> int:
    """Index of the equal-width bin of [0, 1] holding p (p = 1 falls in the last bin)."""
    return min(int(p * n_bins), n_bins - 1)


def stratified_order(items: Sequence[T], n_bins: int, seed: int = 0,
                     confidence: Callable[[T], float] = lambda item: item["model_confidence"]) -> list[int]:
    """Indices of all `items` in the order a confidence-balanced sample draws them.

    Items are grouped into `n_bins` equal-width bins of [0, 1] by `confidence(item)` and shuffled within
    each bin (seeded). The order then takes one item from every bin that still has one, in a seeded
    random order of the bins, round after round. So any prefix of length n is as balanced over the bins
    as the bins allow: every non-empty bin gets n // b or n // b + 1 items (b = bins still holding items),
    and a bin with too few items gives all it has while its share goes to the other bins, round by round.
    The first n entries are exactly :func:`stratified_sample`'s choice.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    rng = random.Random(f"stratified:{seed}")
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for i, item in enumerate(items):
        p = float(confidence(item))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"items[{i}]: confidence {p} is outside [0, 1]")
        bins[confidence_bin(p, n_bins)].append(i)
    for members in bins:
        rng.shuffle(members)
    order: list[int] = []
    depth = 0
    while len(order) < len(items):
        live = [b for b in range(n_bins) if len(bins[b]) > depth]
        rng.shuffle(live)
        order.extend(bins[b][depth] for b in live)
        depth += 1
    return order


def stratified_sample(items: Sequence[T], n: int, n_bins: int, seed: int = 0,
                      confidence: Callable[[T], float] = lambda item: item["model_confidence"]) -> list[T]:
    """Up to `n` items balanced across `n_bins` equal-width confidence bins of [0, 1].

    The paper balanced its items across model-confidence bins; this draws round-robin over the bins
    (see :func:`stratified_order`). When bins run short the others fill in, so min(n, len(items)) items
    come back, as balanced as the pool allows. Items are returned in their original (pool) order.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chosen = sorted(stratified_order(items, n_bins, seed, confidence)[:n])
    return [items[i] for i in chosen]


def answer_user_text(q: Question) -> str:
    """The user text of the answer prompt (prompts.answer_prompt without the chat wrapping)."""
    return prompts.question_block(q) + "\n\n" + prompts.ANSWER_INSTRUCTION.format(hint=prompts.answer_hint(q))


def conversation(q: Question, answer: str, style_instruction: str) -> list[dict[str, str]]:
    """[user: answer prompt, assistant: "The answer is {answer}.", user: style instruction]."""
    return [{"role": "user", "content": answer_user_text(q)},
            {"role": "assistant", "content": f"The answer is {answer}."},
            {"role": "user", "content": style_instruction}]


def max_new_tokens_for(style: str, long_tokens: int, short_tokens: int) -> int:
    """Generation budget of a style: short and uncertainty-only styles get `short_tokens`."""
    return short_tokens if any(style.endswith("_" + length) for length in SHORT_LENGTHS) else long_tokens


# Bump when what a cached result depends on changes in code (prompt wording, grading, the result's fields),
# so results of the old code are not reused.
CACHE_VERSION = 1
CACHE_KINDS = ("confidence", "explanation")


class ResultCache(KeyedLog):
    """Finished results of ``metacog explain`` by key, kept in memory and appended to a JSON-lines file
    (``artifacts.KeyedLog``: process 0 appends, fsynced; a torn last line is cut off on opening).

    A key (:meth:`key`) is a SHA-256 hash of :data:`CACHE_VERSION`, the result's kind, the model's identity
    (``identity``: everything that determines the weights) and everything else the result depends on
    (the prompt, token budget, batch size, ...), so a result made under other settings is never reused: it
    simply misses. Each line is ``{"key", "kind", ...}`` plus the result.

    Args:
      path: the JSON-lines file; None keeps results in memory only.
      identity: the model's identity, part of every key (e.g. ``explain.model_identity(config)``).
    """

    def __init__(self, path: str | os.PathLike[str] | None, identity: str = ""):
        super().__init__(path, "explain-cache line",
                         lambda row: None if row.get("kind") in CACHE_KINDS else f"'kind' is not one of {CACHE_KINDS}")
        self.identity = identity
        self.reused: collections.Counter[str] = collections.Counter()  # results served from the cache, by kind

    def key(self, kind: str, *parts: Any) -> str:
        """The key of a result of `kind` that depends on `parts` (JSON-ready values) besides the model."""
        if kind not in CACHE_KINDS:
            raise ValueError(f"cache kind {kind!r} is not one of {CACHE_KINDS}")
        payload = json.dumps([CACHE_VERSION, kind, self.identity, *parts], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def count(self, kind: str) -> int:
        """Results of `kind` held (read from the file or added)."""
        return sum(row["kind"] == kind for row in self.rows.values())


def generate_explanations(sampler: Sampler, questions: Sequence[Question], answers: Sequence[str],
                          styles: Sequence[str], templates: Mapping[str, str], *, max_new_tokens_long: int,
                          max_new_tokens_short: int, progress: bool = False,
                          cache: ResultCache | None = None) -> list[dict[str, str]]:
    """Greedy second-turn explanations of every style for every (question, answer).

    The prompts of one generation budget are sorted by length (stably) and cut into batches of the
    sampler's batch size. The batches are generated in rounds of one batch per process (the sampler runs
    batch j of a round on process j, ``metacog_jax.multihost``), and after each round the new texts are
    appended to `cache`. A batch whose texts are all in `cache` is not generated again; a batch missing
    any is generated whole (so it is the batch an uninterrupted run makes), and texts already cached are
    kept. A tqdm bar over batches when `progress` (process 0).

    Args:
      cache: where finished texts are kept and looked up, keyed by the model (the cache's identity), the
        budget, the batch size and the prompt's token ids; None keeps them in memory for this call only.

    Returns:
      N dicts style -> generated text (stripped of surrounding whitespace; may be empty when the model
      stops at once).
    """
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    templates = check_templates(templates)
    cache = cache if cache is not None else ResultCache(None)
    batch_size = int(sampler.batch_size)
    # budget -> rows (question index, style, prompt ids, cache key)
    jobs: dict[int, list[tuple[int, str, list[int], str]]] = {}
    for i, (q, a) in enumerate(zip(questions, answers)):
        for style in styles:
            ids = sampler.encode_chat(conversation(q, a, instruction(templates, style, a)))
            budget = max_new_tokens_for(style, max_new_tokens_long, max_new_tokens_short)
            key = cache.key("explanation", budget, batch_size, ids)
            jobs.setdefault(budget, []).append((i, style, ids, key))
    out: list[dict[str, str]] = [{} for _ in questions]
    pending: dict[int, list[list[tuple[int, str, list[int], str]]]] = {}
    for budget, rows in jobs.items():
        rows.sort(key=lambda r: len(r[2]))
        for s in range(0, len(rows), batch_size):
            batch = rows[s:s + batch_size]
            if all(r[3] in cache for r in batch):
                cache.reused["explanation"] += len(batch)
            else:
                pending.setdefault(budget, []).append(batch)
    import jax
    from tqdm.auto import tqdm

    from metacog_jax import multihost
    from metacog_jax.sampling import SamplingParams

    per_round = jax.process_count()
    bar = tqdm(total=sum(map(len, pending.values())), desc="explanations", unit="batch",
               disable=not progress or not multihost.is_writer())
    try:
        for budget, batches in pending.items():
            params = SamplingParams(max_new_tokens=budget, temperature=0.0)
            for start in range(0, len(batches), per_round):
                batches_now = batches[start:start + per_round]  # only the budget's last batch may be short
                rows = [r for batch in batches_now for r in batch]
                # Sorting within windows of batch_size keeps each batch as made here (rows already sorted).
                gen = sampler.generate([r[2] for r in rows], params, jax.random.key(0), sort_window=batch_size)
                new = [{"key": key, "kind": "explanation", "item_id": questions[i].id, "style": style,
                        "max_new_tokens": budget, "text": completions[0].text.strip()}
                       for (i, style, _, key), completions in zip(rows, gen.completions) if key not in cache]
                cache.add(new)
                bar.update(len(batches_now))
    finally:
        bar.close()
    for rows in jobs.values():
        for i, style, _, key in rows:
            out[i][style] = cache[key]["text"]
    return out


def explanation_record(texts: Mapping[str, str]) -> dict[str, Any]:
    """The explanations of one item in STYLE_NAMES order (the items file's key order)."""
    return {s: texts[s] for s in STYLE_NAMES if s in texts}
