"""Paper 2: the model's internal confidence, read from token probabilities (METHOD.md, paper 2).

Multiple choice — the answer prompt of paper 1 (``prompts.answer_prompt``: "... Reply with exactly one
sentence of the form 'The answer is X', where X is the letter of the correct option (A-D).") with the
assistant turn teacher-forced up to ``"The answer is"``; the next token is the option letter (" A",
" B", ...). The probabilities of the question's option letters there, renormalized over its options,
are the model's answer distribution: answer = arg-max letter, confidence = its probability. Teacher
forcing the sentence frame (rather than asking for a bare letter) keeps the letter slot where the
model puts it when it answers freely, and matches the assistant turn the explanations follow
("The answer is B.").

Short answer (numeric, open, label) — P(True) / (P(True) + P(False)) after a prompt that shows the
question and a proposed answer (the model's own greedy answer) and asks whether it is true; the
assistant turn is teacher-forced up to ``"The proposed answer is"`` and the labels are " True" and
" False" (one token each in SmolLM2; checked at start-up for any tokenizer).

Both readouts run through the one-pass label scorer of ``evaluation/scoring.py``: one jitted forward
pass per batch, prompts padded to length buckets. Multiple-choice questions of one call may have
different numbers of options (2 to 26; TruthfulQA has up to 13): every question is scored against the
letters of the largest question in the call, and each row is renormalized over its own options in
log space, so a batch compiles once and a tiny probability is never lost to underflow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from metacog_jax.data import prompts
from metacog_jax.data.records import OPTION_LETTERS, Question
from metacog_jax.evaluation import scoring

MC_ANSWER_PREFIX = "The answer is"
P_TRUE_INSTRUCTION = (
    "Proposed answer: {answer}\n\n"
    "Is the proposed answer true or false? Reply with exactly one sentence of the form "
    "'The proposed answer is True' or 'The proposed answer is False'.")
P_TRUE_PREFIX = "The proposed answer is"
TRUE_FALSE = ("True", "False")


def mc_prefix_text(tokenizer, q: Question) -> str:
    """The chat-formatted answer prompt of `q` plus the teacher-forced "The answer is" (text)."""
    return prompts.answer_prompt(tokenizer, q) + MC_ANSWER_PREFIX


def p_true_prefix_text(tokenizer, q: Question, answer: str) -> str:
    """The chat-formatted P(True) prompt for (q, answer) plus the teacher-forced "The proposed answer is"."""
    user = prompts.question_block(q) + "\n\n" + P_TRUE_INSTRUCTION.format(answer=answer)
    return prompts.prompt_text(tokenizer, user) + P_TRUE_PREFIX


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _renormalize_rows(logp: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logp [N, L] over the first n_valid[i] columns (the rest get probability 0)."""
    cols = np.arange(logp.shape[1])[None, :]
    masked = np.where(cols < n_valid[:, None], logp, -np.inf)
    top = masked.max(axis=1, keepdims=True)
    w = np.exp(masked - top)
    return w / w.sum(axis=1, keepdims=True)


def mc_confidence(model, tokenizer, questions: Sequence[Question], batch_size: int = 8) -> list[dict[str, Any]]:
    """The model's answer and internal confidence on multiple-choice questions.

    Args:
      model: a Decoder; tokenizer: its tokenizer (chat template required).
      questions: N multiple-choice questions, each with 2 to 26 options (may differ between questions).
      batch_size: rows per compiled scoring call.

    Returns:
      N dicts: ``answer`` (the arg-max option letter), ``confidence`` (its renormalized probability,
      in [1/n_options, 1]), ``option_probs`` (float64 [n_options], the option letters' probabilities
      renormalized over the question's options, summing to 1) and ``option_mass`` (the total
      probability the option letters had at that position before renormalizing, in [0, 1]: low mass
      means the model wanted to write something other than a letter).

    Raises:
      ValueError: a question is not multiple choice, or the option letters do not tokenize as separate
        tokens after "The answer is" with this tokenizer.
    """
    if not questions:
        return []
    for i, q in enumerate(questions):
        if q.kind != "multiple_choice":
            raise ValueError(f"questions[{i}] ({q.id!r}) is of kind {q.kind!r}, not multiple_choice")
    n_options = np.asarray([len(q.options) for q in questions])
    letters = list(OPTION_LETTERS[: int(n_options.max())])
    prefix_texts = [mc_prefix_text(tokenizer, q) for q in questions]
    # The letter boundary (" is" + " B") is the same in every prompt, so one check covers the call.
    label_set = scoring.checked_labels(tokenizer, letters, prefix_texts[0], " ", ".", "option letters")
    prefixes = [_encode(tokenizer, t) for t in prefix_texts]
    # The padding id only fills masked slots; any valid id does.
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    logp = scoring.label_logprobs(model, prefixes, label_set.token_ids, batch_size=batch_size,
                                  pad_id=int(pad_id))
    probs = _renormalize_rows(logp, n_options)
    out = []
    for row_lp, row, n in zip(logp, probs, n_options):
        k = int(np.argmax(row[:n]))
        mass = float(np.exp(row_lp[:n]).sum())
        out.append(dict(answer=OPTION_LETTERS[k], confidence=float(row[k]), option_probs=row[:n].copy(),
                        option_mass=min(mass, 1.0)))
    return out


def p_true(model, tokenizer, questions: Sequence[Question], answers: Sequence[str],
           batch_size: int = 8) -> np.ndarray:
    """P(True) / (P(True) + P(False)) that the proposed `answers` to `questions` are correct.

    Args:
      model: a Decoder; tokenizer: its tokenizer (chat template required).
      questions: N questions of any kind.
      answers: N proposed answers as shown to the model (e.g. the model's own greedy answer).
      batch_size: rows per compiled scoring call.

    Returns:
      float64 [N] in [0, 1].

    Raises:
      ValueError: lengths differ, or " True"/" False" do not tokenize on their own after the prefix.
    """
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    if not questions:
        return np.zeros((0,), np.float64)
    prefix_texts = [p_true_prefix_text(tokenizer, q, a) for q, a in zip(questions, answers)]
    label_set = scoring.checked_labels(tokenizer, TRUE_FALSE, prefix_texts[0], " ",
                                       prompts.end_of_turn(tokenizer), "True/False labels")
    prefixes = [_encode(tokenizer, t) for t in prefix_texts]
    probs = scoring.score_labels(model, tokenizer, prefixes, label_set.token_ids, batch_size)
    return probs[:, 0]
