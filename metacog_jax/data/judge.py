"""An LLM judge: a model the codebase loads, asked whether a response gives one of the gold answers.

The paper graded TriviaQA with an LLM judge; this is that grader, for any model ``load_model`` takes (an
embedded name, a preset, a hub id, a Hugging Face directory or a GGUF file). Each (question, response)
becomes one chat prompt (:func:`judge_prompt`) holding the question, the gold answers and the response,
ending in a yes/no question; the judge answers greedily through our :class:`~metacog_jax.sampling.Sampler`
(batched, a few tokens), and :func:`parse_verdict` reads Yes -> True, No -> False, anything else -> None
(undecided: the caller falls back to the rule, see ``data/graders.py``).

Verdicts are cached per (judge model, question, response) in a JSON-lines file, appended and fsynced
after every batch, so a killed grading run resumes without asking again and two graders that share a
judge share its verdicts. A truncated last line (a kill mid-write) is dropped on reading.

Offline the only judge is the embedded SmolLM2-135M-Instruct: a weak judge, and when it grades the
samples of the same model it judges its own answers. It exercises the machinery; name a stronger judge
for results (``config.grading.judge``, README "Grading").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from metacog_jax.artifacts import KeyedLog
from metacog_jax.data.records import Question


# The response is cut to this many characters in the prompt (the judge needs the answer, not an essay).
MAX_RESPONSE_CHARS = 1200

_INSTRUCTION = ("You are grading an answer to a quiz question. Decide whether the response gives one of the "
                "correct answers: the same thing, possibly worded differently. A response that names several "
                "different answers, or a different answer, is wrong.")


def gold_text(question: Question) -> str:
    """The gold answer(s) as the judge reads them: every alias, the option with its text, the number."""
    if question.kind == "multiple_choice":
        letter = question.answers[0]
        return f"({letter}) {question.options[question.option_letters.index(letter)]}"
    return "; ".join(question.answers)


def judge_prompt(question: Question, response: str) -> list[dict[str, str]]:
    """The chat messages asking the judge about one response."""
    text = question.question if not question.context else f"{question.context}\n\n{question.question}"
    if question.kind == "multiple_choice":
        text += "\n" + "\n".join(f"({l}) {o}" for l, o in zip(question.option_letters, question.options))
    response = response.strip()
    if len(response) > MAX_RESPONSE_CHARS:
        response = response[:MAX_RESPONSE_CHARS] + " ..."
    body = (f"{_INSTRUCTION}\n\nQuestion: {text}\nCorrect answers (any one of them is right): "
            f"{gold_text(question)}\nResponse: {response}\n\nIs the response correct? Reply with one word: "
            "Yes or No.")
    return [{"role": "user", "content": body}]


_YES = re.compile(r"\b(?:yes|correct|right)\b", re.IGNORECASE)
_NO = re.compile(r"\b(?:no|incorrect|wrong|not\s+(?:correct|right|yes))\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """Yes -> True, No -> False, read from the judge's reply; None when it says neither or both.

    The first word decides when it is yes or no ("Yes.", "No, the response ..."); otherwise the first
    line, quotes removed, must hold exactly one of the two kinds of words ("The response is correct." ->
    True, 'The answer is not "Yes"' -> False).
    """
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] in ("yes", "no"):
        return words[0] == "yes"
    line = re.sub(r"[\"'“”‘’]", "", text.strip().split("\n", 1)[0])  # 'The answer is not "Yes"'

    # "incorrect" / "not correct" contain the yes-words; take the no-words out before looking for yes.
    no = _NO.search(line) is not None
    yes = _YES.search(_NO.sub(" ", line)) is not None
    if yes != no:
        return yes
    return None


# Bump when judge_prompt or parse_verdict changes, so cached verdicts of the old wording are not reused.
PROMPT_VERSION = 2


def cache_key(judge: str, question: Question, response: str, max_new_tokens: int = 8) -> str:
    """The cache key of one verdict: a hash of the judge's name, the prompt version and token budget, the
    question (id, text, gold) and the response, so an edited question or another judge never reuses a
    verdict."""
    payload = json.dumps([judge, PROMPT_VERSION, max_new_tokens, question.id, question.question,
                          list(question.options), list(question.answers), response], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class VerdictCache(KeyedLog):
    """Verdicts by :func:`cache_key`, kept in memory and appended to a JSON-lines file (or memory only);
    each line is ``{"key", "verdict", ...}``."""

    def __init__(self, path: str | os.PathLike[str] | None):
        super().__init__(path, "judge-cache line", _verdict_problem)

    def __getitem__(self, key: str) -> bool | None:
        return self.rows[key]["verdict"]


def _verdict_problem(row: dict[str, Any]) -> str | None:
    verdict = row.get("verdict", "missing")
    return None if verdict is None or isinstance(verdict, bool) else "'verdict' must be true, false or null"


class LLMJudge:
    """Yes/no equivalence verdicts from a language model, batched and cached.

    Args:
      name: the judge's name in the cache and in the records (its model spec).
      sampler: a :class:`~metacog_jax.sampling.Sampler` over the judge model and its tokenizer.
      cache_path: the verdict cache (JSON lines); None keeps verdicts in memory only.
      max_new_tokens: tokens the judge may write (small models often open with "The answer is", so the
        verdict word may come a few tokens in).
      chunk_size: (question, response) pairs per batch and per cache append.
    """

    def __init__(self, name: str, sampler, *, cache_path: str | os.PathLike[str] | None = None,
                 max_new_tokens: int = 8, chunk_size: int = 64):
        if not name:
            raise ValueError("a judge needs a name (its model spec)")
        self.name, self.sampler = name, sampler
        self.cache = VerdictCache(cache_path)
        self.max_new_tokens, self.chunk_size = max_new_tokens, chunk_size
        self.n_asked = 0  # verdicts this judge generated (not read from the cache)

    def __call__(self, items: Sequence[tuple[Question, str]], progress: bool = False) -> list[bool | None]:
        """One verdict per (question, response): True, False, or None when the judge said neither."""
        import jax

        from metacog_jax.sampling import SamplingParams

        keys = [cache_key(self.name, q, r, self.max_new_tokens) for q, r in items]
        todo: dict[str, tuple[Question, str]] = {}
        for key, item in zip(keys, items):
            if key not in self.cache and key not in todo:
                todo[key] = item
        pending = list(todo.items())
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"judging ({self.name})", unit="answer",
                   disable=not progress or not pending)
        try:
            for start in range(0, len(pending), self.chunk_size):
                chunk = pending[start:start + self.chunk_size]
                prompts = [self.sampler.encode_chat(judge_prompt(q, r)) for _, (q, r) in chunk]
                gen = self.sampler.generate(prompts, params, jax.random.key(0))
                rows = [{"key": key, "judge": self.name, "question_id": q.id,
                         "verdict": parse_verdict(row[0].text), "text": row[0].text}
                        for (key, (q, _)), row in zip(chunk, gen.completions)]
                self.cache.add(rows)
                self.n_asked += len(rows)
                bar.update(len(chunk))
        finally:
            bar.close()
        return [self.cache[key] for key in keys]
