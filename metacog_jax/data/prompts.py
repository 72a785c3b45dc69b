"""Prompt formats of the two metacognitive tasks, applied through the model's chat template.

Three formats (METHOD.md, paper 1):
  * answer-only — used to sample K answers per question;
  * single-question confidence — the model answers, then states its confidence:
    "The answer is {answer} and my confidence score is {c}";
  * pairwise — the model says for which of Q1/Q2 it is more likely to be correct, then answers both.

An example is a list of text *segments* with roles (prompt, answer, confidence, choice, format). Each
segment is tokenized on its own and the ids concatenated, so training batches and the one-pass scorer
see exactly the same token boundaries; the role of every token gives the loss mask and loss weights.
The assistant span is found by rendering the conversation with and without the assistant turn; a
template that cannot mark it fails loudly instead of training on the prompt.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from metacog_jax.data.pairs import CHOICE_LABELS
from metacog_jax.data.records import OPTION_LETTERS, Question

PROMPT, ANSWER, CONFIDENCE, CHOICE, FORMAT = "prompt", "answer", "confidence", "choice", "format"
REPLAY = "replay"  # the base model's own answer-prompt completion, replayed to keep its answers (training)


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be split into prompt and assistant completion."""


# -- confidence scales ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConfidenceScale:
    """A set of confidence labels and the probability each stands for.

    `labels[i]` is the text the model writes (without the leading space), `values[i]` in [0, 1].
    """

    name: str
    labels: tuple[str, ...]
    values: tuple[float, ...]
    description: str

    def label_for(self, p: float) -> str:
        """The label whose value is nearest to probability p (ties go to the lower label)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"confidence {p} outside [0, 1]")
        i = min(range(len(self.values)), key=lambda j: (abs(self.values[j] - p), j))
        return self.labels[i]

    def value_of(self, label: str) -> float | None:
        try:
            return self.values[self.labels.index(label.strip())]
        except ValueError:
            return None


def _scale(name: str) -> ConfidenceScale:
    if name == "0-1":
        return ConfidenceScale(name, tuple(f"{i / 100:.2f}" for i in range(101)),
                               tuple(i / 100 for i in range(101)), "0.00 (certainly wrong) to 1.00 (certainly right), "
                               "with two decimals")
    if name == "0-100":
        return ConfidenceScale(name, tuple(str(i) for i in range(101)), tuple(i / 100 for i in range(101)),
                               "0 (certainly wrong) to 100 (certainly right)")
    if name == "0-10":
        return ConfidenceScale(name, tuple(str(i) for i in range(11)), tuple(i / 10 for i in range(11)),
                               "0 (certainly wrong) to 10 (certainly right)")
    if name == "0-9":
        # Ten bins; label k stands for the bin centre (k + 0.5) / 10.
        return ConfidenceScale(name, tuple(str(i) for i in range(10)), tuple((i + 0.5) / 10 for i in range(10)),
                               "0 (certainly wrong) to 9 (certainly right)")
    raise ValueError(f"unknown confidence scale {name!r}; choose one of {', '.join(SCALE_NAMES)}")


SCALE_NAMES = ("0-1", "0-100", "0-10", "0-9")


def confidence_scale(name: str) -> ConfidenceScale:
    return _scale(name)


# -- question text --------------------------------------------------------------------------------------
def question_block(q: Question) -> str:
    """The question as shown to the model: context, question, lettered options or allowed labels."""
    parts = []
    if q.context:
        parts.append(q.context.strip())
    parts.append(q.question.strip())
    if q.kind == "multiple_choice":
        parts.append("\n".join(f"{OPTION_LETTERS[i]}) {opt}" for i, opt in enumerate(q.options)))
    return "\n".join(parts)


def answer_hint(q: Question) -> str:
    """What X must be in "The answer is X" for this kind of question."""
    if q.kind == "multiple_choice":
        return f"the letter of the correct option ({OPTION_LETTERS[0]}-{OPTION_LETTERS[len(q.options) - 1]})"
    if q.kind == "numeric":
        return "the final number"
    if q.kind == "label":
        return "one of: " + ", ".join(q.labels)
    return "a short answer of a few words"


def answer_text(q: Question, normalized: str) -> str:
    """How an answer is written in a completion (letter, number, label or short phrase)."""
    if q.kind == "multiple_choice":
        return normalized.upper()
    return normalized


# -- chat template plumbing -----------------------------------------------------------------------------
def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template applied to `messages`, as text. Every template is rendered with
    `enable_thinking=False`: Qwen3's then opens the answer with an empty <think></think> block, in the
    generation prompt and in a rendered assistant turn alike, so the model answers at once (no reasoning
    trace before the answer it is graded on); templates without the switch ignore it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=False)


def prompt_text(tokenizer, user: str, system: str | None = None) -> str:
    """The chat-formatted prompt up to and including the assistant header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return render_chat(tokenizer, messages, add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """The text the template writes after an assistant message (e.g. "<|im_end|>\\n")."""
    probe = "XQZ assistant probe"
    messages = [{"role": "user", "content": "hi"}]
    head = render_chat(tokenizer, messages, add_generation_prompt=True)
    full = render_chat(tokenizer, messages + [{"role": "assistant", "content": probe}])
    if not full.startswith(head) or probe not in full[len(head):]:
        raise TemplateError(
            "the tokenizer's chat template does not render the assistant turn after the generation prompt, so "
            "the completion (loss) span cannot be marked; use a model whose template supports "
            "add_generation_prompt")
    after = full[len(head):]
    if not after.startswith(probe):
        raise TemplateError(f"the chat template inserts text before the assistant content ({after[:40]!r})")
    return after[len(probe):]


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    role: str


@dataclasses.dataclass(frozen=True)
class Example:
    """A rendered training or scoring example. `task` is "single", "pairwise" or "replay"."""

    task: str
    segments: tuple[Segment, ...]
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)


def tokenize_segments(tokenizer, segments: Sequence[Segment]) -> tuple[list[int], list[str]]:
    """Token ids and the role of each token, each segment encoded on its own (no special tokens added)."""
    ids, roles = [], []
    for seg in segments:
        toks = tokenizer.encode(seg.text, add_special_tokens=False) if seg.text else []
        ids.extend(toks)
        roles.extend([seg.role] * len(toks))
    return ids, roles


# -- the three formats ----------------------------------------------------------------------------------
ANSWER_INSTRUCTION = "Reply with exactly one sentence of the form 'The answer is X', where X is {hint}."
# Other wordings of the answer instruction (config `data.answer_instruction`: a name here, or a template
# with {hint}). Each asks for METHOD's form "The answer is X"; which one a small model follows best is
# measured on a validation split (README, "Choosing the demo's settings").
ANSWER_INSTRUCTIONS = {
    "sentence": ANSWER_INSTRUCTION,
    "reply": "Reply 'The answer is' and {hint}.",
    "followed": "Reply with 'The answer is' followed by {hint}.",
}
SINGLE_INSTRUCTION = (
    "Answer the question, then give your confidence that your answer is correct on a scale from {scale}. "
    "Reply with exactly one sentence of the form 'The answer is X and my confidence score is C', "
    "where X is {hint}.")
PAIRWISE_INSTRUCTION = (
    "Here are two questions.\n\nQ1:\n{q1}\n\nQ2:\n{q2}\n\n"
    "For which of the two questions are you more likely to give the correct answer? Reply with Q1 or Q2 on "
    "the first line. Then answer both, one per line, in the form 'Q1: The answer is X' and "
    "'Q2: The answer is Y'. For Q1, X is {hint1}. For Q2, Y is {hint2}.")
CONFIDENCE_PREFIX = " and my confidence score is"


def answer_instruction(name_or_template: str | None) -> str:
    """The answer-instruction template (with {hint}) for a name in ANSWER_INSTRUCTIONS or a template."""
    if name_or_template is None:
        return ANSWER_INSTRUCTION
    if name_or_template in ANSWER_INSTRUCTIONS:
        return ANSWER_INSTRUCTIONS[name_or_template]
    if "{hint}" not in name_or_template:
        raise ValueError(f"answer instruction {name_or_template!r} is neither one of {sorted(ANSWER_INSTRUCTIONS)} "
                         "nor a template containing {hint}")
    return name_or_template


def answer_prompt(tokenizer, q: Question, instruction: str | None = None) -> str:
    """Chat-formatted answer-only prompt (for sampling K answers); `instruction` as for answer_instruction."""
    text = answer_instruction(instruction).format(hint=answer_hint(q))
    return prompt_text(tokenizer, question_block(q) + "\n\n" + text)


def single_prompt(tokenizer, q: Question, scale: ConfidenceScale) -> str:
    user = question_block(q) + "\n\n" + SINGLE_INSTRUCTION.format(scale=scale.description, hint=answer_hint(q))
    return prompt_text(tokenizer, user)


def pairwise_prompt(tokenizer, q1: Question, q2: Question) -> str:
    user = PAIRWISE_INSTRUCTION.format(q1=question_block(q1), q2=question_block(q2), hint1=answer_hint(q1),
                                       hint2=answer_hint(q2))
    return prompt_text(tokenizer, user)


def replay_example(tokenizer, q: Question, completion: str, instruction: str | None = None) -> Example:
    """The answer prompt (as sampled) followed by the base model's own greedy completion, every completion
    token a target: trained alongside the tasks so that the answers the evaluation reads stay the base's."""
    return Example("replay", (Segment(answer_prompt(tokenizer, q, instruction), PROMPT),
                              Segment(completion, REPLAY)), dict(question_id=q.id))


def single_example(tokenizer, q: Question, answer: str | None, label: str | None, scale: ConfidenceScale,
                   **meta) -> Example:
    """Single-question example. With label=None it stops at the confidence slot (for scoring).

    An unparseable answer (None) is written as "unknown", so the model still learns to state a confidence.
    """
    ans = answer_text(q, answer) if answer is not None else "unknown"
    segs = [Segment(single_prompt(tokenizer, q, scale), PROMPT), Segment("The answer is ", FORMAT),
            Segment(ans, ANSWER), Segment(CONFIDENCE_PREFIX, FORMAT)]
    if label is not None:
        segs += [Segment(" " + label, CONFIDENCE), Segment(end_of_turn(tokenizer), FORMAT)]
    return Example("single", tuple(segs), dict(meta, question_id=q.id))


def pairwise_example(tokenizer, q1: Question, q2: Question, choice: str | None,
                     answers: tuple[str | None, str | None] = (None, None), **meta) -> Example:
    """Pairwise example; `choice` is "Q1" or "Q2", None stops at the choice slot (for scoring)."""
    segs = [Segment(pairwise_prompt(tokenizer, q1, q2), PROMPT)]
    if choice is not None:
        if choice not in CHOICE_LABELS:
            raise ValueError(f"pairwise choice must be one of {CHOICE_LABELS}, got {choice!r}")
        a1 = answer_text(q1, answers[0]) if answers[0] is not None else "unknown"
        a2 = answer_text(q2, answers[1]) if answers[1] is not None else "unknown"
        segs += [Segment(choice, CHOICE), Segment("\nQ1: The answer is ", FORMAT), Segment(a1, ANSWER),
                 Segment("\nQ2: The answer is ", FORMAT), Segment(a2, ANSWER),
                 Segment(end_of_turn(tokenizer), FORMAT)]
    return Example("pairwise", tuple(segs), dict(meta, question_ids=(q1.id, q2.id)))


def label_token_ids(tokenizer, labels: Sequence[str], context: str, sep: str = " ") -> list[list[int]]:
    """Token ids of each `sep + label` as the scorer and the batches encode it, checked against encoding
    the joined text `context + sep + label`: a tokenizer that merges the label with its context would make
    the one-pass readout differ from what the model reads, so it fails here (METHOD: verify every label)."""
    ctx_ids = tokenizer.encode(context, add_special_tokens=False)
    out = []
    for label in labels:
        ids = tokenizer.encode(sep + label, add_special_tokens=False)
        joint = tokenizer.encode(context + sep + label, add_special_tokens=False)
        if joint != ctx_ids + ids:
            raise TemplateError(
                f"label {label!r} does not tokenize on its own after {context[-30:]!r}: joint {joint[-6:]} vs "
                f"separate {(ctx_ids + ids)[-6:]}; pick another confidence scale for this tokenizer")
        out.append(ids)
    return out
