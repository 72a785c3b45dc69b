"""Answer extraction and grading for the four question kinds.

:func:`extract_answer` turns a free-form model response into a normalized
answer (or None when nothing parseable is there); :func:`grade` checks it
against the gold answers. Normalized answers are canonical, so the modal
answer among K samples (self-consistency, METHOD.md) is computed with
:func:`answers_equal` / :func:`modal_answer`.

Normalized forms by kind:

* ``multiple_choice``: the option letter, upper case (``"B"``).
* ``numeric``: a canonical decimal string: no separators, no trailing zeros,
  ``"18"`` for "18.0", "$18" or "18 dollars". An expression after "The
  answer is" is evaluated by a small parser of our own ("3 + 4" -> ``"7"``)
  unless it copies the question's expression; numbers inside an echoed copy
  of the question are never read as the answer.
* ``open``: the first sentence of the answer (after "The answer is", lead-ins
  such as "I think it's" dropped), SQuAD-style normalized: lower case,
  punctuation and the articles a/an/the removed, whitespace collapsed. One
  exception keeps what the containment rule needs: when the answer is a list
  of candidates ("X, Y and Z", "X, Y, Z"), each list boundary is kept as the
  token ``"|"`` (:data:`LIST_SEPARATOR`): "Napster, Kazaa and LimeWire" ->
  ``"napster | kazaa | and limewire"``. "X or Y" needs no mark (the word
  stays). :func:`plain_answer` drops the marks; :func:`answers_equal` ignores
  them.
* ``label``: the label spelled as in ``Question.labels`` (``"Yes"``).

Open answers are graded by one of :data:`OPEN_RULES` (:func:`is_correct`):
``"containment"`` (default: a gold alias stated inside the answer, not negated
and not as one of several alternatives), ``"exact"`` or ``"f1"``.

Every response is first stripped of markdown emphasis and of a stated
confidence ("... and my confidence score is 0.85", "Confidence: 90%"), so the
confidence number is never read as the answer.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation, localcontext

from metacog_jax.data.records import Question

# Rules for open answers (see is_correct); containment is the default.
OPEN_RULES = ("containment", "exact", "f1")
DEFAULT_OPEN_RULE = "containment"

# Numeric equality: |a - b| <= max(REL_TOL * s, ABS_TOL * min(s, 1)) with
# s = max(|a|, |b|), exact Decimal arithmetic. The second part absorbs printing
# noise ("0.3333333" vs 1/3 rounded): absolute at 1 and above, relative below
# (so a small gold value such as 0.0000001 is not equal to 0); the first part
# only matters for huge values.
REL_TOL = 1e-9
ABS_TOL = 1e-6


@dataclasses.dataclass(frozen=True)
class Grade:
    """Result of grading one response by the rules (an LLM judge: ``data/graders.py``).

    Attributes:
      normalized: the extracted, normalized answer; None if none was found.
      correct: whether it matches the gold answer.
    """

    normalized: str | None
    correct: bool


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


# LaTeX operators and a single star between operands ("7 * 1", "2*9", "(3) * 4")
# are arithmetic; every other star is markdown emphasis.
_LATEX_OPERATORS = ((re.compile(r"\\(?:times|cdot)(?![A-Za-z])"), " × "),
                    (re.compile(r"\\div(?![A-Za-z])"), " ÷ "))
_TIMES_STAR = re.compile(r"(?<=[\d)])(\s*)(?<!\*)\*(?!\*)(\s*)(?=[\d(])")


# Vulgar fractions ("½", "2½", "2 ½") as decimals; NFKC would make "2½" into "21⁄2".
_VULGAR_FRACTION = re.compile(r"(?<![\d.,])(\d+ ?)?([\u00bc-\u00be\u2150-\u215e])")


def _vulgar_fraction(match: re.Match[str]) -> str:
    whole = Decimal(match.group(1).strip()) if match.group(1) else Decimal(0)
    return canonical_number(whole + Decimal(repr(unicodedata.numeric(match.group(2)))))


def _clean(response: str, arithmetic: bool = False) -> str:
    """Removes markdown emphasis, LaTeX wrappers and stated confidence.

    Vulgar fractions become decimals (``2½`` -> ``2.5``) and a fraction slash a ``/``. With
    ``arithmetic`` (numeric questions) multiplication and division signs are kept as ``×`` and ``÷``
    instead of being dropped with the markdown stars, and an en dash is a minus sign.
    """
    text = _VULGAR_FRACTION.sub(_vulgar_fraction, response)
    text = unicodedata.normalize("NFKC", text).replace("\u2044", "/")
    text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = _BOXED.sub(r"\nThe answer is \1.\n", text)
    if arithmetic:
        text = text.replace("\u2013", "-")
        for pattern, sign in _LATEX_OPERATORS:
            text = pattern.sub(sign, text)
        text = _TIMES_STAR.sub(r"\1×\2", text)
    text = re.sub(r"[*`]+|(?<!\w)_+|_+(?!\w)", "", text)
    for pattern in _CONFIDENCE_PATTERNS:
        text = pattern.sub(" ", text)
    return text.strip()


def normalize_text(text: str) -> str:
    """SQuAD-style normalization for open answers.

    Lower-cases, removes punctuation (ASCII and Unicode), the articles a/an/the
    and extra whitespace: ``"The  Eiffel Tower!"`` -> ``"eiffel tower"``. Dashes
    and slashes separate words (``"Jay‑Z"`` -> ``"jay z"``); numbers keep their
    decimal point and sign (``"-2.5"`` is not ``"25"``), not thousands commas.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    # A number's sign and decimal point are held as control characters through the punctuation filter.
    text = _DECIMAL_POINT.sub("\0", _SIGNED_NUMBER.sub("\1", text))
    text = "".join(" " if ch in "/\u2212" or unicodedata.category(ch) == "Pd" else ch for ch in text)
    text = "".join(ch for ch in text
                   if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(?:a|an|the)\b", " ", text).replace("\0", ".").replace("\1", "-")
    return " ".join(text.split())


_SIGNED_NUMBER = re.compile(r"(?<![\w.])[-\u2212\u2013](?=\.?\d)")  # the sign only
_DECIMAL_POINT = re.compile(r"(?:(?<=[\d\1])|(?<![\w.]))\.(?=\d)")  # "2.5", "-.5", ".5"


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
_LARGER_NUMBER_WORDS = frozenset(
    "thirty forty fifty sixty seventy eighty ninety hundred thousand million billion".split())


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


# Echoed copies of the question. Tokens compared between question and
# response: numbers (canonical), words (lower case) and arithmetic signs.
_ECHO_TOKEN = re.compile(r"(?P<num>(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d))"
                         r"|(?P<op>[-−+*×÷/=()])|(?P<word>[^\W\d_]+)")
_OPERATOR_WORDS = {"x": "×", "*": "×", "plus": "+", "minus": "-", "times": "×"}
_OPERATORS = frozenset("+-×÷/")
# An echo is a run of at least this many question tokens with a number and an
# operator ("5 + 3", "is 5 + 3"); shorter runs ("is 3") are ordinary words.
_MIN_ECHO_TOKENS = 3

# One token of an arithmetic expression: a number ("1,000", "$3", "2.5") or a
# sign; "x" is a times sign only before an operand ("9 x 2", not "18x faster").
_EXPRESSION_TOKEN = re.compile(r"\s*(?:(?P<num>\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d))"
                               r"|(?P<op>[-−+*×÷/()]|x(?=\s*[\d(])))")
# What follows a number that only opens a cut-off expression at the end of
# the text ("... 60 +").
_TRAILING_OPERATOR = re.compile(r"\s*[-−+×÷/]\s*\(?\s*")


@dataclasses.dataclass(frozen=True)
class _Token:
    """A word, number or sign of a text, for finding echoed copies of the question."""

    text: str  # canonical: number as canonical_number, words lower case, "−" as "-"
    start: int
    end: int
    is_number: bool


def _echo_tokens(text: str) -> list[_Token]:
    """Tokens of ``text``; "plus", "x", "times", "minus" read as their signs."""
    out = []
    for m in _ECHO_TOKEN.finditer(text):
        if m.group("num"):
            value = canonical_number(Decimal(m.group("num").replace(",", "")))
            out.append(_Token(value, m.start(), m.end(), True))
        else:
            word = (m.group("op") or m.group("word").lower()).replace("−", "-")
            out.append(_Token(_OPERATOR_WORDS.get(word, word), m.start(), m.end(), False))
    return out


def _echo_spans(text: str, question_tokens: Sequence[_Token]) -> list[tuple[int, int]]:
    """Character spans of ``text`` that copy a run of the question.

    A span is a run of at least ``_MIN_ECHO_TOKENS`` consecutive tokens that
    also occur consecutively in the question and contain a number and an
    operator: "What is 5 + 3?" echoed as "5 + 3" or "what is 5 + 3". The
    result that follows an echo ("5 + 3 = 8") is outside the span.
    """
    question = [t.text for t in question_tokens]
    response = _echo_tokens(text)
    spans = []
    previous = [0] * (len(question) + 1)  # longest common run ending at (i - 1, j - 1)
    for i, token in enumerate(response):
        current = [0] * (len(question) + 1)
        for j, word in enumerate(question):
            if token.text == word:
                current[j + 1] = previous[j] + 1
        length = max(current)
        # Every run ending at i is a suffix of the longest one, so checking the
        # longest is enough.
        run = response[i - length + 1: i + 1]
        if (length >= _MIN_ECHO_TOKENS and any(t.is_number for t in run)
                and any(t.text in _OPERATORS for t in run)):
            if spans and spans[-1][1] >= run[0].start:  # grows the previous span
                spans[-1] = (spans[-1][0], run[-1].end)
            else:
                spans.append((run[0].start, run[-1].end))
        previous = current
    return spans


@dataclasses.dataclass(frozen=True)
class _Expression:
    """An arithmetic expression read from a response.

    Attributes:
      start, end: its character span.
      value: its value; None when it is cut off ("60 +"), has unbalanced
        parentheses or divides by zero.
      tokens: numbers (canonical) and signs, in order.
      n_operators: binary operators applied; 0 for a plain (signed) number.
      spaced: whether every binary operator has a space on some side
        ("18 - 3"), as opposed to "18-20".
    """

    start: int
    end: int
    value: Decimal | None
    tokens: tuple[str, ...]
    n_operators: int
    spaced: bool


class _Incomplete(Exception):
    """The expression stops where an operand or ")" is needed."""


def _parse_expression(text: str, start: int, end: int) -> _Expression:
    """Parses the longest arithmetic expression in ``text[start:end]`` from ``start``.

    Grammar (own recursive descent, never Python ``eval``)::

      expr   := term (("+" | "-") term)*
      term   := factor (("×" | "x" | "/" | "÷") factor)*
      factor := ("-" | "+") factor | number | "(" expr ")"

    Anything else ends the expression ("3 + 4 apples" -> ``3 + 4``).
    """
    tokens: list[tuple[str, int, int, bool]] = []  # (canonical, start, end, space before)
    pos = start
    while (m := _EXPRESSION_TOKEN.match(text, pos, end)) is not None:
        spaced = m.start(m.lastgroup) > pos
        if m.group("num"):
            digits = m.group("num").lstrip("$ ").replace(",", "")
            tokens.append((digits, m.start("num"), m.end(), spaced))
        else:
            op = {"−": "-", "x": "×", "*": "×", "÷": "/"}.get(m.group("op"), m.group("op"))
            tokens.append((op, m.start("op"), m.end(), spaced))
        pos = m.end()
    n_operators = 0
    unspaced = False
    i = 0

    def peek() -> str | None:
        return tokens[i][0] if i < len(tokens) else None

    def binary(ops: str, operand: Callable[[], Decimal | None]) -> Decimal | None:
        nonlocal i, n_operators, unspaced
        value = operand()
        while peek() in tuple(ops):
            op_index = i
            i += 1
            right = operand()
            n_operators += 1
            if not tokens[op_index][3] and not (op_index + 1 < len(tokens) and tokens[op_index + 1][3]):
                unspaced = True
            value = apply(op_index, value, right)
        return value

    def apply(op_index: int, left: Decimal | None, right: Decimal | None) -> Decimal | None:
        op = tokens[op_index][0]
        if left is None or right is None:
            return None
        if op == "+":
            return left + right
        if op == "-":
            return left - right
        if op == "×":
            return left * right
        return None if right == 0 else left / right

    def factor() -> Decimal | None:
        nonlocal i
        token = peek()
        if token is None:
            raise _Incomplete
        if token in ("-", "+"):
            i += 1
            value = factor()
            return None if value is None else (-value if token == "-" else value)
        if token == "(":
            i += 1
            value = binary("+-", term)
            if peek() != ")":
                raise _Incomplete
            i += 1
            return value
        if token[0].isdigit():
            i += 1
            return Decimal(token)
        raise _Incomplete

    def term() -> Decimal | None:
        return binary("×/", factor)

    value: Decimal | None
    try:
        with localcontext() as context:
            context.prec = 40
            value = binary("+-", term)
            if value is not None and value != value.to_integral_value():
                value = value.quantize(Decimal("1e-12"))  # as parse_number does for "1/3"
    except _Incomplete:
        value, i = None, len(tokens)
    except InvalidOperation:
        value = None
    used = tokens[:i] if i else tokens[:1]
    return _Expression(start=start, end=used[-1][2] if used else start, value=value,
                       tokens=tuple(canonical_number(Decimal(t)) if t[0].isdigit() else t
                                    for t, *_ in used),
                       n_operators=n_operators, spaced=not unspaced)


def _is_question_copy(expression: _Expression, question_tokens: Sequence[_Token]) -> bool:
    """Whether ``expression`` repeats the question's arithmetic.

    True for a contiguous copy ("7 * 1" of "What is 7 * 1?") and for the
    same numbers and signs in another order ("1 * 7").
    """
    signs = {"÷": "/"}
    question = [signs.get(t.text, t.text) for t in question_tokens]
    own = list(expression.tokens)
    n = len(own)
    if any(question[j:j + n] == own for j in range(len(question) - n + 1)):
        return True
    arithmetic = [t for t, q in zip(question, question_tokens) if q.is_number or t in _OPERATORS]
    return collections.Counter(t for t in own if t not in "()") == collections.Counter(arithmetic)


def _expression_start(text: str, number: re.Match[str]) -> int:
    """Start of the expression whose first number is ``number``: before any "(" opening it."""
    start = number.start()
    while (m := re.search(r"\(\s*$", text[:start])) is not None:
        start = m.start()
    return start


def _stated_value(text: str, start: int, end: int, question_tokens: Sequence[_Token],
                  rejected: list[tuple[int, int]]) -> Decimal | None:
    """The answer stated in ``text[start:end]``, the words after "The answer is".

    After an "=" the result follows the last one ("18 - 3 = 15" -> 15).
    Otherwise the first number or expression is the answer: a plain
    number as it is, an expression of the model's own evaluated ("3 + 4"
    -> 7). A copy of the question's expression, a cut-off expression
    ("60 +") and a division by zero are no answer: their spans are added
    to ``rejected`` and the next number of the phrase is tried.
    """
    equals = text.rfind("=", start, end)
    regions = [(equals + 1, end), (start, end)] if equals >= 0 else [(start, end)]
    for region_start, region_end in regions:
        pos = region_start
        while (number := _NUMBER.search(text, pos, region_end)) is not None:
            expression = _parse_expression(text, _expression_start(text, number), region_end)
            if expression.n_operators == 0 and expression.value is not None:
                return expression.value
            if (expression.tokens[1:2] == ("-",) and len(expression.tokens) == 3
                    and not expression.spaced and expression.value is not None
                    and expression.value < 0):
                # "18-20" is a range, not a subtraction: its first number, as before.
                return Decimal(expression.tokens[0])
            if expression.value is not None and not _is_question_copy(expression, question_tokens):
                return expression.value
            rejected.append((expression.start, expression.end))
            pos = max(expression.end, number.end())
    return None


def _extract_numeric(question: Question, text: str) -> str | None:
    """Canonical number from a cleaned response; signals in decreasing strength.

    1. GSM8K style "#### 18";
    2. the last answer phrase ("The answer is 18", \\boxed{18}) whose
       sentence states a value (see :func:`_stated_value`);
    3. the last number anywhere, skipping numbers inside an echoed copy of
       the question ("What is 5 + 3? ..." never gives 3; "5 + 3 = 8" gives
       8), inside an expression rejected in step 2, or opening a cut-off
       expression at the end ("... 60 +");
    4. a spelled-out small number ("The answer is five").
    """
    question_tokens = _echo_tokens(_clean(question.question, arithmetic=True))
    rejected: list[tuple[int, int]] = []
    for match in reversed(list(_HASHES.finditer(text))):
        value = _stated_value(text, match.start("body"), match.end("body"), question_tokens, rejected)
        if value is not None:
            return canonical_number(value)
    for match in reversed(list(_ANSWER_PHRASE.finditer(text))):
        tail = re.split(r"\n|(?<=[^\d\s])\.(?:\s|$)", text[match.end():], maxsplit=1)[0]
        value = _stated_value(text, match.end(), match.end() + len(tail), question_tokens, rejected)
        if value is not None:
            return canonical_number(value)
    skipped = _echo_spans(text, question_tokens) + rejected
    for number in reversed(list(_NUMBER.finditer(text))):
        if any(number.start() < end and start < number.end() for start, end in skipped):
            continue
        if _TRAILING_OPERATOR.fullmatch(text, number.end()):
            continue
        value = _match_value(number)
        if value is not None:
            return canonical_number(value)
    words = re.findall(r"[a-z]+", text.lower())
    for i in reversed(range(len(words))):
        # "three" of "three hundred" or "thirty three" is part of a larger number.
        neighbours = words[max(i - 1, 0):i] + words[i + 1:i + 2]
        if words[i] in _NUMBER_WORDS and not set(neighbours) & _LARGER_NUMBER_WORDS:
            return str(_NUMBER_WORDS[words[i]])
    return None


def numbers_equal(a: str, b: str, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """Numeric equality of two number strings within a small tolerance."""
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    scale = max(abs(x), abs(y))
    return abs(x - y) <= max(Decimal(repr(rel_tol)) * scale, Decimal(repr(abs_tol)) * min(scale, Decimal(1)))


# ---------------------------------------------------------------------------
# Open and label
# ---------------------------------------------------------------------------

_OPEN_LEAD_INS = re.compile(
    r"^(?:(?:i\s+(?:think|believe|guess|would\s+say)|i'?m\s+(?:fairly\s+|pretty\s+)?sure|"
    r"probably|perhaps|maybe|my\s+answer\s+is|my\s+guess\s+is|it'?s|it\s+is|it\s+was|"
    r"that\s+(?:is|would\s+be)|that'?s)\b[\s:,]*(?:that\s+)?)+",
    re.IGNORECASE)
_ABBREVIATIONS = frozenset("st mr mrs ms dr jr sr mt ft vs etc no inc ltd co corp gen col lt sgt".split())


def _split_first_sentence(text: str) -> tuple[str, str]:
    """``text`` split after the first sentence of its first line: (sentence, rest).

    A period after an initialism ("D.C.", "U.S.") or a common abbreviation
    ("St.", "Dr.") does not end the sentence.
    """
    line, _, after = text.strip().partition("\n")
    for match in re.finditer(r"[.!?](?=\s|$)", line):
        before = re.search(r"(\S+)$", line[: match.start()])
        word = before.group(1) if before else ""
        if match.group() == "." and (re.fullmatch(r"(?:[A-Za-z]\.)*[A-Za-z]", word)
                                     or word.lower() in _ABBREVIATIONS):
            continue
        return line[: match.start()], line[match.end():] + "\n" + after
    return line, after


def _first_sentence(text: str) -> str:
    """The first line of ``text`` up to its first sentence end."""
    return _split_first_sentence(text)[0]


# The token that marks a boundary between the items of a listed answer in the
# normalized open form ("napster | kazaa | and limewire").
LIST_SEPARATOR = "|"
# Words that make a comma-separated part a clause ("Paris, which ...", "X, the
# capital, is ...", "X, followed by Y") rather than a listed candidate.
_CLAUSE_WORDS = frozenset(
    "which who whom whose that where when while is was are were be been being has have had "
    "do does did it its this these those he she they we i you there here but because since "
    "although though if so then also not followed later after before including like such "
    "unlike than".split())
_CONJUNCTIONS = ("and", "or")
_MAX_ITEM_TOKENS = 4


def _is_item(tokens: Sequence[str]) -> bool:
    """Whether normalized tokens read as a short listed candidate ("kazaa")."""
    return 0 < len(tokens) <= _MAX_ITEM_TOKENS and not set(tokens) & _CLAUSE_WORDS


def _mark_list(candidate: str) -> str:
    """Normalizes an open answer, keeping the boundaries of a list of candidates.

    A list is "X, Y and Z" / "X, Y or Z" / "X, Y, Z" (an Oxford comma or a
    semicolon too) whose middle items are short and clause-free, and whose
    last part begins with an item. Each list comma, and the final "and"/"or",
    becomes :data:`LIST_SEPARATOR`: "Napster, Kazaa and LimeWire" ->
    ``"napster | kazaa | and limewire"``. Anything else (one comma as in
    "Paris, France", apposition "Paris, the capital, is ...", "X and Y"
    without commas) is plain SQuAD normalization.
    """
    parts = [p for p in re.split(r"\s*(?:;|(?<!\d),|,(?!\d))\s*", candidate) if normalize_text(p)]
    tokens = [normalize_text(p).split() for p in parts]

    def strip_conjunction(words: list[str]) -> list[str]:
        return words[1:] if words and words[0] in _CONJUNCTIONS else words

    def split_last(words: list[str]) -> list[list[str]] | None:
        """"y and z ..." -> [["y"], ["and", "z", ...]] when "y" is an item."""
        for k, word in enumerate(words[1:_MAX_ITEM_TOKENS + 1], start=1):
            if word in _CONJUNCTIONS and k + 1 < len(words) and _is_item(words[:k]):
                return [words[:k], words[k:]]
        return None

    items: list[list[str]] | None = None
    if len(tokens) >= 3:
        last = strip_conjunction(tokens[-1])
        opening = list(itertools.takewhile(lambda w: w not in _CLAUSE_WORDS, last))
        if all(_is_item(strip_conjunction(t)) for t in tokens[1:-1]) and opening:
            tail = split_last(tokens[-1]) if tokens[-1][0] not in _CONJUNCTIONS else None
            items = tokens[:-1] + (tail or [tokens[-1]])
    elif len(tokens) == 2 and tokens[1][0] not in _CONJUNCTIONS:
        tail = split_last(tokens[1])
        items = [tokens[0]] + tail if tail else None
    if items is None:
        return normalize_text(candidate)
    return f" {LIST_SEPARATOR} ".join(" ".join(item) for item in items)


def _extract_open(question: Question, text: str) -> str | None:
    phrases = list(_ANSWER_PHRASE.finditer(text))
    candidate = text[phrases[-1].end():] if phrases else text
    candidate, rest = _split_first_sentence(candidate)
    # A response that opens with punctuation only ("?? Napster") or by
    # repeating the question answers in the next sentence.
    question_text = normalize_text(question.question)
    while normalize_text(candidate) in ("", question_text) and rest.strip():
        candidate, rest = _split_first_sentence(rest)
    # Drop a trailing clause joined by "and" that only restates confidence
    # or reasoning ("Paris and I am sure").
    candidate = re.split(r"\s+(?:and|because|since|as)\s+(?:i|my|it|this)\b", candidate,
                         maxsplit=1, flags=re.IGNORECASE)[0]
    candidate = _OPEN_LEAD_INS.sub("", candidate.strip())
    normalized = _mark_list(candidate)
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


# Containment (the default open rule): see _answer_contained.
_NEGATIONS = frozenset("not never nor neither isnt wasnt arent werent doesnt didnt cannot cant".split())
_NEGATION_PAIRS = frozenset({("rather", "than"), ("instead", "of"), ("other", "than")})
_ALTERNATIVE_BEFORE = frozenset({"or", "either", "nor", "neither"})
_ALTERNATIVE_AFTER = frozenset({"or", "nor"})
# An alias made only of such words ("it", "the one") is too common for containment.
_FUNCTION_WORDS = frozenset(
    "a an the it its he she they them his her their we you i me is was are were be been of in on "
    "at to for by with from and or not no this that these those there here what which who".split())


def plain_answer(normalized: str) -> str:
    """A normalized open answer without its list separators (see module docstring)."""
    return " ".join(t for t in normalized.split() if t != LIST_SEPARATOR)


def _number_word(token: str) -> str:
    """"eight" -> "8", so "8 seasons" contains the alias "eight seasons"."""
    return str(_NUMBER_WORDS[token]) if token in _NUMBER_WORDS else token


def _runs(needle: Sequence[str], haystack: Sequence[str]) -> list[int]:
    """Start indices where ``needle`` occurs in ``haystack`` as a contiguous run."""
    n = len(needle)
    return [i for i in range(len(haystack) - n + 1) if n and list(haystack[i:i + n]) == list(needle)]


def _answer_contained(question: Question, normalized: str) -> bool:
    """The containment rule: some alias is stated as the answer inside ``normalized``.

    An alias counts where it occurs as whole words (numbers spelled or in
    digits alike), unless that occurrence is

    * negated: right after "not", "never", "wasn't", "rather than" ...;
    * one of alternatives: next to "or", after "either"/"neither"/"nor";
    * an item of a marked list ("napster | kazaa | and limewire") whose
      items are not all gold aliases (a list of co-answers such as the three
      books of a series is credited);
    * the number idiom "one of ...".

    An alias that occurs in the question itself ("Which Napoleon ...?" with
    alias "Napoleon"), or that is made only of function words, proves
    nothing by containment: it is credited only when it is the whole answer.
    """
    tokens = normalized.split()
    positions = [i for i, t in enumerate(tokens) if t != LIST_SEPARATOR]
    plain = [_number_word(tokens[i]) for i in positions]
    question_words = normalize_text(question.question).split()
    aliases = [a.split() for a in (normalize_text(x) for x in question.answers) if a]

    def contains_alias(words: Sequence[str]) -> bool:
        words = [_number_word(w) for w in words]
        return any(_runs([_number_word(w) for w in alias], words) for alias in aliases)

    pieces = " ".join(tokens).split(LIST_SEPARATOR)
    co_answers = all(contains_alias(p.split()) for p in pieces)

    def counts(first: int, last: int, alias: Sequence[str]) -> bool:
        before = tokens[first - 1] if first >= 1 else None
        before2 = tokens[first - 2] if first >= 2 else None
        after = tokens[last + 1] if last + 1 < len(tokens) else None
        if before in _NEGATIONS or (before2, before) in _NEGATION_PAIRS:
            return False
        if before in _ALTERNATIVE_BEFORE or after in _ALTERNATIVE_AFTER:
            return False
        if len(alias) == 1 and _number_word(alias[0]).isdigit() and after == "of":
            return False
        in_list = LIST_SEPARATOR in (before, after) or (before in _CONJUNCTIONS and before2 == LIST_SEPARATOR)
        return co_answers or not in_list

    for alias in aliases:
        if _runs(alias, question_words) or set(alias) <= _FUNCTION_WORDS:
            if [tokens[i] for i in positions] == alias:
                return True
            continue
        needle = [_number_word(w) for w in alias]
        for start in _runs(needle, plain):
            if counts(positions[start], positions[start + len(needle) - 1], alias):
                return True
    return False


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
        return _extract_numeric(question, _clean(response, arithmetic=True))
    if question.kind == "open":
        return _extract_open(question, text)
    if question.kind == "label":
        return _extract_label(question, text)
    raise ValueError(f"question {question.id!r}: unknown kind {question.kind!r}")


def _check_rule(rule: str, f1_threshold: float) -> None:
    if rule not in OPEN_RULES:
        raise ValueError(f"unknown open-answer rule {rule!r}; choose one of {', '.join(OPEN_RULES)}")
    if isinstance(f1_threshold, bool) or not isinstance(f1_threshold, (int, float)) \
            or not 0 < f1_threshold <= 1:
        raise ValueError(f"f1_threshold must be a number in (0, 1], got {f1_threshold!r}")


def is_correct(question: Question, normalized: str | None, *, rule: str = DEFAULT_OPEN_RULE,
               f1_threshold: float = 0.5) -> bool:
    """Whether an already-normalized answer matches the gold answers.

    Args:
      question: the question with its gold ``answers``.
      normalized: output of :func:`extract_answer` (e.g. a modal answer).
      rule: open questions only, one of :data:`OPEN_RULES`:
        ``"containment"`` (default): a gold alias is stated inside the answer,
        not negated and not as one of several alternatives (see
        :func:`_answer_contained`); ``"exact"``: the whole answer equals an
        alias; ``"f1"``: token F1 >= ``f1_threshold`` against some alias.
      f1_threshold: the F1 needed by the ``"f1"`` rule, in (0, 1].

    Raises:
      ValueError: ``rule`` is not one of :data:`OPEN_RULES`, or
        ``f1_threshold`` is outside (0, 1].
    """
    _check_rule(rule, f1_threshold)
    if normalized is None:
        return False
    if question.kind == "numeric":
        return any(numbers_equal(normalized, gold) for gold in question.answers)
    if question.kind == "multiple_choice":
        return normalized.upper() == question.answers[0]
    if question.kind == "label":
        return normalized.casefold() == question.answers[0].casefold()
    if question.kind == "open":
        if rule == "containment":
            return _answer_contained(question, normalized)
        answer = plain_answer(normalized)
        aliases = [a for a in (normalize_text(x) for x in question.answers) if a]
        if rule == "exact":
            return answer in aliases
        return any(token_f1(answer, a) >= f1_threshold for a in aliases)
    raise ValueError(f"question {question.id!r}: unknown kind {question.kind!r}")


def grade(question: Question, response: str, *, rule: str = DEFAULT_OPEN_RULE,
          f1_threshold: float = 0.5) -> Grade:
    """Extracts and grades one response by the rules (``data/graders.py`` adds the LLM judge).

    Args:
      question: the question with gold answers.
      response: the model's raw text.
      rule: open questions only: see :func:`is_correct`.
      f1_threshold: for ``rule="f1"``: see :func:`is_correct`.
    """
    _check_rule(rule, f1_threshold)
    normalized = extract_answer(question, response)
    return Grade(normalized=normalized,
                 correct=is_correct(question, normalized, rule=rule, f1_threshold=f1_threshold))


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
            # the tolerance's scale: 1e-6 at 1 and above, 7 significant digits below
            return canonical_number(value.quantize(Decimal(1).scaleb(min(-6, value.adjusted() - 6))))
        except InvalidOperation:  # too many digits to quantize: already a fine key
            return canonical_number(value)
    if question.kind == "multiple_choice":
        return normalized.upper()
    if question.kind == "label":
        return normalized.casefold()
    return plain_answer(normalized)  # list separators do not make answers differ


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
