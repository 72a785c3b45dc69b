"""Answer extraction and grading for the four question kinds.

:func:`extract_answer` turns a free-form model response into a normalized
answer (or None when nothing parseable is there); :func:`grade` checks it
against the gold answers. Normalized answers are canonical, so the modal
answer among K samples (self-consistency, METHOD.md) is computed with
:func:`answers_equal` / :func:`modal_answer`.

Normalized forms by kind:

* ``multiple_choice``: the option letter, upper case (``"B"``).
* ``numeric``: a canonical decimal string: no separators, no trailing zeros,
  ``"18"`` for "18.0", "$18" or "18 dollars".
* ``open``: SQuAD-style normalized text: lower case, punctuation and the
  articles a/an/the removed, whitespace collapsed.
* ``label``: the label spelled as in ``Question.labels`` (``"Yes"``).

Every response is first stripped of markdown emphasis and of a stated
confidence ("... and my confidence score is 0.85", "Confidence: 90%"), so the
confidence number is never read as the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Protocol

from metacog_jax.data.records import Question

# Numeric equality: |a - b| <= max(REL_TOL * max(|a|, |b|), ABS_TOL), exact
# Decimal arithmetic. The absolute part absorbs printing noise ("0.3333333"
# vs 1/3 rounded); the relative part only matters for huge values.
REL_TOL = 1e-9
ABS_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Grade:
    """Result of grading one response.

    Attributes:
      normalized: the extracted, normalized answer; None if none was found.
      correct: whether it matches the gold answer.
      judged: True when a :class:`Judge` made the decision.
    """

    normalized: str | None
    correct: bool
    judged: bool = False


class Judge(Protocol):
    """Optional grader (e.g. an LLM judge) consulted by :func:`grade`.

    Returns True/False to decide, or None to defer to the rule-based grade.
    """

    def __call__(self, question: Question, response: str, extracted: str | None) -> bool | None:
        ...


# ---------------------------------------------------------------------------
# Shared clean-up
# ---------------------------------------------------------------------------

_NUMBER_TEXT = r"[-−]?\$?\d+(?:[.,]\d+)*\s?%?"
_CONFIDENCE_PATTERNS = (
    # "and my confidence score is 0.85", "Confidence: 90%", "confidence level of 7/10"
    re.compile(r"[,;(]?\s*(?:and\s+)?(?:my\s+|with\s+(?:a\s+)?)?confidence(?:\s+(?:score|level))?"
               r"\s*(?:is|of|:|=)?\s*(?:about\s+|around\s+)?" + _NUMBER_TEXT
               + r"(?:\s*/\s*\d+)?\)?", re.IGNORECASE),
    # "I am 90% confident", "(80 percent sure)"
    re.compile(r"[(]?\s*[-−]?\d+(?:\.\d+)?\s?(?:%|percent)\s*(?:confident|sure|certain)\)?",
               re.IGNORECASE),
)
# "The answer is", "Answer:", "final answer =" ...
_ANSWER_PHRASE = re.compile(
    r"\banswer\b\s*(?:is|:|=|would\s+be|should\s+be|will\s+be|must\s+be)?\s*:?", re.IGNORECASE)
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
# \boxed{X} is how math-tuned models state a final answer.
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _clean(response: str) -> str:
    """Removes markdown emphasis, LaTeX wrappers and stated confidence."""
    text = unicodedata.normalize("NFKC", response)
    text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _BOXED.sub(r"\nThe answer is \1.\n", text)
    text = re.sub(r"[*`]+|(?<!\w)_+|_+(?!\w)", "", text)
    for pattern in _CONFIDENCE_PATTERNS:
        text = pattern.sub(" ", text)
    return text.strip()


def normalize_text(text: str) -> str:
    """SQuAD-style normalization for open answers.

    Lower-cases, removes punctuation (ASCII and Unicode), the articles a/an/the
    and extra whitespace: ``"The  Eiffel Tower!"`` -> ``"eiffel tower"``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in "-–—/" else ch for ch in text)
    text = "".join(ch for ch in text
                   if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    """Word tokens that keep signed decimals intact (``-3.45`` stays one token)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("−", "-")
    tokens = re.findall(r"(?<![\w.])-?(?:\d+(?:[.,]\d+)*|\.\d+)|[^\W_]+", text)
    return [t for t in tokens if t not in ("a", "an", "the")]


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

# A single letter token, optionally wrapped in ( ) [ ] or quotes.
_LETTER = r"(?<![\w'’-])[(\[\"']?(?P<letter>[A-Za-z])(?![A-Za-z0-9'’-])(?P<close>[)\]\"']?)"
_EXPLICIT = [re.compile(p + _LETTER, re.IGNORECASE) for p in (
    # "The answer is B", "Answer: (B)", "final answer: option c"
    r"\banswer\b\s*(?:is|:|=|would\s+be|should\s+be|will\s+be|must\s+be)?\s*:?\s*"
    r"(?:(?:option|choice|letter)\s*)?:?\s*",
    # "the correct option is D", "best choice: B"
    r"\b(?:correct|right|best)\s+(?:option|choice|one)\s*(?:is|:|=|would\s+be)?\s*:?\s*",
    # "I choose B", "I'd go with option C", "I will pick (D)"
    r"\bI(?:\s+would|\s+will|'d|'ll)?\s+(?:choose|pick|select|go\s+with|say)\s+"
    r"(?:(?:option|choice|answer)\s+)?",
    # "it's option C", "it is B"
    r"\bit(?:'s|\s+is|\s+must\s+be|\s+should\s+be)\s+(?:(?:option|choice)\s+)?",
)]
_EXPLICIT_AFTER = re.compile(  # "Option C is correct", "(B) is the right answer"
    r"(?:\b(?:option|choice)\s+)?" + _LETTER
    # Not "is true": logic options say "when J is true".
    + r"\s+(?:is|seems|would\s+be)\s+(?:the\s+)?(?:correct|right|best)(?:\s+answer)?",
    re.IGNORECASE)
_MENTION = re.compile(r"\b(?:option|choice)\s+" + _LETTER, re.IGNORECASE)
# A letter opening the response: "B", "B.", "(B)", "b)", "'C'", or "B Paris".
# A hyphen or apostrophe after it ("A-level", "I'm") makes it a word.
_START = re.compile(r"^\s*(?:(?:option|choice)\s*)?(?P<open>[(\[\"']?)(?P<letter>[A-Za-z])"
                    r"(?:(?P<close>[)\]\"'.:,])|\s*$|(?P<rest>\s+\S.*))", re.IGNORECASE | re.DOTALL)
_WRAPPED = re.compile(r"[(\[](?P<letter>[A-Z])[)\]]|(?<![\w(\[])(?P<letter2>[A-Z])\)")
_STANDALONE = re.compile(r"(?<![\w'’-])(?P<letter>[A-Z])(?![\w'’-])")


# Words that, after a capital "I", make it the pronoun rather than option I.
_PRONOUN_VERB = re.compile(
    r"\s+(?:think|believe|guess|would|will|am|was|have|had|know|feel|can|could|should|"
    r"must|might|say|said|choose|pick|select|go|agree|disagree|do|did|don't|cannot|can't|"
    r"hope|suppose|assume|prefer|want|need|see|mean|also|really|just|still)\b", re.IGNORECASE)


def _is_letter_token(match: re.Match[str], text: str) -> bool:
    """Rejects the words "a"/"A" and "I" where they read as English, not options."""
    letter = match.group("letter")
    wrapped_before = match.start("letter") > 0 and text[match.start("letter") - 1] in "([\"'"
    close = (match.groupdict().get("close") or "")
    after = text[match.end():]
    if wrapped_before or close:
        return True
    if letter in "ai":
        # Lower-case "a"/"i" is a letter only at the end of a clause ("Answer: a").
        return re.match(r"\s*(?:$|[.,;:!?\n])", after) is not None
    if letter == "I" and _PRONOUN_VERB.match(after):
        return False  # "the answer is I think B": pronoun
    return True


def _last_explicit_letter(text: str) -> str | None:
    """The last letter stated as the answer in ``text``, upper case, or None."""
    best: tuple[int, str] | None = None
    for pattern in (*_EXPLICIT, _EXPLICIT_AFTER):
        for match in pattern.finditer(text):
            if _is_letter_token(match, text):
                if best is None or match.start("letter") > best[0]:
                    best = (match.start("letter"), match.group("letter").upper())
    return None if best is None else best[1]


def _option_text_letter(question: Question, text: str, whole: bool) -> str | None:
    """The letter whose option text equals (``whole``) or alone appears in ``text``."""
    response = _tokens(text)
    if not response:
        return None
    options = [_tokens(o) for o in question.options]
    if whole:
        hits = [i for i, o in enumerate(options) if o and o == response]
        return question.option_letters[hits[0]] if len(hits) == 1 else None

    def contains(haystack: list[str], needle: list[str]) -> bool:
        n = len(needle)
        return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))

    hits = [i for i, o in enumerate(options) if contains(response, o)]
    # An option that is part of a longer matched option ("10" in "10 km")
    # is not a separate hit.
    hits = [i for i in hits if not any(j != i and contains(options[j], options[i]) and
                                       len(options[j]) > len(options[i]) for j in hits)]
    return question.option_letters[hits[0]] if len(hits) == 1 else None


_BARE_LETTER = re.compile(r"[(\[\"']?[A-Za-z][)\]\"'.:]?")


def _verbatim(text: str, fold_case: bool) -> str:
    """Spacing-insensitive form that keeps every symbol and article."""
    text = " ".join(unicodedata.normalize("NFKC", text).split()).rstrip(". ")
    return text.casefold() if fold_case else text


def _verbatim_option_letter(question: Question, text: str) -> str | None:
    """The letter of the one option whose full text *is* the response.

    Also tried on the first line, and on what follows the last "answer is" /
    "Answer:" (whole and its first line). Case matters
    first (some MMLU-Pro options differ only in case, "Bb Bb" vs "bb Bb"),
    then is ignored.
    """
    candidates = [text, text.split("\n", 1)[0]]
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        tail = text[phrases[-1].end():]
        candidates += [tail, tail.strip().split("\n", 1)[0]]
    # A bare letter is an option letter even if some option's text is that
    # letter (MMLU-Pro lists elements "B", "C" as options).
    candidates = [c for c in candidates if not _BARE_LETTER.fullmatch(c.strip())]
    cleaned = [_clean(o) for o in question.options]  # as the response was cleaned
    for fold_case in (False, True):
        options = [_verbatim(o, fold_case) for o in cleaned]
        for candidate in candidates:
            response = _verbatim(candidate, fold_case)
            hits = [i for i, o in enumerate(options) if o == response]
            if len(hits) == 1:
                return question.option_letters[hits[0]]
    return None


def _single(letters: Sequence[str]) -> str | None:
    distinct = set(letters)
    return next(iter(distinct)) if len(distinct) == 1 else None


def _extract_choice(question: Question, text: str) -> str | None:
    """Option letter from a cleaned response; signals in decreasing strength.

    1. the response (or its first line, or what follows "answer is") is
       exactly one option's text;
    2. the last explicit statement ("the answer is (B)", "I'd go with C",
       "option D is correct"); a stated letter outside the options -> None;
    3. a letter opening the response ("B.", "(b)", "C Paris");
    4. the whole response equals one option's words (articles, punctuation
       ignored);
    5. a single distinct letter among "option X" mentions, then among
       wrapped letters "(X)"/"X)";
    6. exactly one option's words appear in the response;
    7. a single distinct stand-alone capital letter other than "A" and "I"
       (which are usually English words).
    """
    valid = question.option_letters
    # A response that is exactly one option's text is that option, even when
    # the text itself contains letters ("(C) output is labor intensive").
    verbatim = _verbatim_option_letter(question, text)
    if verbatim is not None:
        return verbatim
    explicit = _last_explicit_letter(text)
    if explicit is not None:
        # A stated letter beyond the options is an invalid answer, not a cue
        # to look for weaker signals.
        return explicit if explicit in valid else None

    start = _START.match(text)
    if start is not None and start.group("close") in ("'", '"') and not start.group("open"):
        start = None  # "I'm sure ...": a word, not a quoted letter
    if start is not None:
        letter = start.group("letter").upper()
        rest = start.group("rest")
        if rest is None:
            # "B", "B.", "(B)", "b)" opening the response.
            return letter if letter in valid else None
        # "B Paris" counts only when the rest begins with that option's text,
        # so "A cat is ..." is not read as option A.
        if letter in valid:
            option = _tokens(question.options[valid.index(letter)])
            if option and _tokens(rest)[: len(option)] == option:
                return letter

    for candidate in (
        _option_text_letter(question, text, whole=True),
        _single([m.group("letter").upper() for m in _MENTION.finditer(text)
                 if _is_letter_token(m, text)]),
        _single([(m.group("letter") or m.group("letter2")) for m in _WRAPPED.finditer(text)]),
        _option_text_letter(question, text, whole=False),
        _single([m.group("letter") for m in _STANDALONE.finditer(text)
                 if m.group("letter") not in "AI"]),
    ):
        if candidate is not None:
            return candidate if candidate in valid else None
    return None


# ---------------------------------------------------------------------------
# Numeric
# ---------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−])?(?:\$\s?)?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?(?!\d)"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?")
_HASHES = re.compile(r"####\s*(?P<body>[^\n]*)")
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}


def canonical_number(value: Decimal) -> str:
    """Formats a Decimal canonically: ``18.50`` -> ``"18.5"``, ``-0`` -> ``"0"``."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def parse_number(text: str) -> Decimal | None:
    """Parses one number token ("1,234.5", "-$3", "3/4"); None if not a number."""
    match = _NUMBER.search(text.strip())
    if match is None:
        return None
    return _match_value(match)


def _match_value(match: re.Match[str]) -> Decimal | None:
    try:
        value = Decimal(match.group("int").replace(",", "") + (match.group("frac") or ""))
        if match.group("den"):
            den = Decimal(match.group("den"))
            if den == 0:
                return None
            value = (value / den).quantize(Decimal("1e-12")) if value % den else value / den
    except InvalidOperation:
        return None
    return -value if match.group("sign") else value


def _numbers(text: str) -> list[Decimal]:
    return [v for m in _NUMBER.finditer(text) if (v := _match_value(m)) is not None]


def _extract_numeric(text: str) -> str | None:
    # 1. GSM8K style "#### 18".
    hashes = _HASHES.findall(text)
    for body in reversed(hashes):
        values = _numbers(body)
        if values:
            return canonical_number(values[0])
    # 2. "The answer is 18" (\boxed{18} was rewritten to this form): the
    #    first number after the last such phrase that
    #    has one in the same sentence or line.
    for match in reversed(list(_ANSWER_PHRASE.finditer(text))):
        tail = re.split(r"\n|(?<=[^\d\s])\.(?:\s|$)", text[match.end():], maxsplit=1)[0]
        # "The answer is 18 - 3 = 15": the result follows the last "=".
        values = _numbers(tail.rsplit("=", 1)[-1]) or _numbers(tail)
        if values:
            return canonical_number(values[0])
    # 3. The last number anywhere (end of a chain of thought).
    values = _numbers(text)
    if values:
        return canonical_number(values[-1])
    # 4. A spelled-out small number ("The answer is five").
    words = re.findall(r"[a-z]+", text.lower())
    for word in reversed(words):
        if word in _NUMBER_WORDS:
            return str(_NUMBER_WORDS[word])
    return None


def numbers_equal(a: str, b: str, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Numeric equality of two number strings within a small tolerance."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    scale = max(abs(x), abs(y))
    return abs(x - y) <= max(Decimal(repr(rel_tol)) * scale, Decimal(repr(abs_tol)))


# ---------------------------------------------------------------------------
# Open and label
# ---------------------------------------------------------------------------

_OPEN_LEAD_INS = re.compile(
    r"^(?:(?:i\s+(?:think|believe|guess|would\s+say)|i'?m\s+(?:fairly\s+|pretty\s+)?sure|"
    r"probably|perhaps|maybe|my\s+answer\s+is|my\s+guess\s+is|it'?s|it\s+is|it\s+was|"
    r"that\s+(?:is|would\s+be)|that'?s)\b[\s:,]*(?:that\s+)?)+",
    re.IGNORECASE)
_ABBREVIATIONS = frozenset("st mr mrs ms dr jr sr mt ft vs etc no inc ltd co corp gen col lt sgt".split())


def _first_sentence(text: str) -> str:
    """The first line of ``text`` up to its first sentence end.

    A period after an initialism ("D.C.", "U.S.") or a common abbreviation
    ("St.", "Dr.") does not end the sentence.
    """
    line = text.strip().split("\n", 1)[0]
    for match in re.finditer(r"[.!?](?=\s|$)", line):
        before = re.search(r"(\S+)$", line[: match.start()])
        word = before.group(1) if before else ""
        if match.group() == "." and (re.fullmatch(r"(?:[A-Za-z]\.)*[A-Za-z]", word)
                                     or word.lower() in _ABBREVIATIONS):
            continue
        return line[: match.start()]
    return line


def _extract_open(text: str) -> str | None:
    phrases = list(_ANSWER_PHRASE.finditer(text))
    candidate = text[phrases[-1].end():] if phrases else text
    candidate = _first_sentence(candidate)
    # Drop a trailing clause joined by "and" that only restates confidence
    # or reasoning ("Paris and I am sure").
    candidate = re.split(r"\s+(?:and|because|since|as)\s+(?:i|my|it|this)\b", candidate,
                         maxsplit=1, flags=re.IGNORECASE)[0]
    candidate = _OPEN_LEAD_INS.sub("", candidate.strip())
    normalized = normalize_text(candidate)
    return normalized or None


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalized strings (SQuAD definition)."""
    pred, ref = prediction.split(), gold.split()
    common = collections.Counter(pred) & collections.Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def _extract_label(question: Question, text: str) -> str | None:
    by_fold = {label.casefold(): label for label in question.labels}
    alternatives = "|".join(re.escape(label) for label in sorted(question.labels, key=len, reverse=True))
    word = re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        tail = _first_sentence(text[phrases[-1].end():])
        match = word.search(tail)
        if match is not None:
            return by_fold[match.group(0).casefold()]
    match = word.search(text)
    return None if match is None else by_fold[match.group(0).casefold()]


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def extract_answer(question: Question, response: str) -> str | None:
    """Extracts the normalized answer from a model response.

    Args:
      question: supplies the kind, options and labels.
      response: the model's raw text.

    Returns:
      The normalized answer (see module docstring), or None when no answer of
      the right kind can be read from the response.
    """
    text = _clean(response)
    if not text:
        return None
    if question.kind == "multiple_choice":
        return _extract_choice(question, text)
    if question.kind == "numeric":
        return _extract_numeric(text)
    if question.kind == "open":
        return _extract_open(text)
    if question.kind == "label":
        return _extract_label(question, text)
    raise ValueError(f"question {question.id!r}: unknown kind {question.kind!r}")


def is_correct(question: Question, normalized: str | None, *,
               f1_threshold: float | None = None) -> bool:
    """Whether an already-normalized answer matches the gold answers.

    Args:
      question: the question with its gold ``answers``.
      normalized: output of :func:`extract_answer` (e.g. a modal answer).
      f1_threshold: open questions only: also accept a token F1 >= this
        against any alias (off when None).
    """
    if normalized is None:
        return False
    if question.kind == "numeric":
        return any(numbers_equal(normalized, gold) for gold in question.answers)
    if question.kind == "multiple_choice":
        return normalized.upper() == question.answers[0]
    if question.kind == "label":
        return normalized.casefold() == question.answers[0].casefold()
    if question.kind == "open":
        aliases = [normalize_text(a) for a in question.answers]
        if normalized in aliases:
            return True
        if f1_threshold is not None:
            return any(token_f1(normalized, a) >= f1_threshold for a in aliases if a)
        return False
    raise ValueError(f"question {question.id!r}: unknown kind {question.kind!r}")


def grade(question: Question, response: str, *, judge: Judge | None = None,
          f1_threshold: float | None = None) -> Grade:
    """Extracts and grades one response.

    Args:
      question: the question with gold answers.
      response: the model's raw text.
      judge: optional :class:`Judge`; when it returns True/False that is the
        verdict (``Grade.judged`` is set), when it returns None the rule-based
        grade stands. Off by default.
      f1_threshold: see :func:`is_correct`.
    """
    normalized = extract_answer(question, response)
    if judge is not None:
        verdict = judge(question, response, normalized)
        if verdict is not None:
            return Grade(normalized=normalized, correct=bool(verdict), judged=True)
    return Grade(normalized=normalized,
                 correct=is_correct(question, normalized, f1_threshold=f1_threshold))


def canonical_answer(question: Question, normalized: str | None) -> str | None:
    """A key equal for answers that :func:`answers_equal` treats as equal.

    Numeric answers are rounded to the tolerance scale so near-equal values
    share a key; other kinds are already canonical.
    """
    if normalized is None:
        return None
    if question.kind == "numeric":
        value = parse_number(normalized)
        if value is None:
            return normalized
        try:
            return canonical_number(value.quantize(Decimal("1e-6")))
        except InvalidOperation:  # too many digits to quantize: already a fine key
            return canonical_number(value)
    if question.kind == "multiple_choice":
        return normalized.upper()
    if question.kind == "label":
        return normalized.casefold()
    return normalized


def answers_equal(question: Question, a: str | None, b: str | None) -> bool:
    """Whether two normalized answers to ``question`` count as the same answer.

    None (no answer) is never equal to anything, itself included.
    """
    if a is None or b is None:
        return False
    if question.kind == "numeric":
        return numbers_equal(a, b)
    return canonical_answer(question, a) == canonical_answer(question, b)


def modal_answer(question: Question, answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The most common normalized answer among samples, and its count.

    Answers are grouped with :func:`answers_equal`; ties go to the answer
    seen first. None entries (unparseable samples) never form the mode, but
    callers should still count them in the denominator of consistency
    (``count / len(answers)``).

    Returns:
      ``(modal answer, count)``, or ``(None, 0)`` if every entry is None.
    """
    groups: list[tuple[str, int]] = []
    for answer in answers:
        if answer is None:
            continue
        for i, (representative, count) in enumerate(groups):
            if answers_equal(question, representative, answer):
                groups[i] = (representative, count + 1)
                break
        else:
            groups.append((answer, 1))
    if not groups:
        return None, 0
    best = max(range(len(groups)), key=lambda i: (groups[i][1], -i))
    return groups[best]
