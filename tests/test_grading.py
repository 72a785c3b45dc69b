"""Table-driven tests of answer extraction and grading, adversarial cases included."""

from __future__ import annotations

import pytest

from metacog_jax.data import grading
from metacog_jax.data.grading import Grade, answers_equal, extract_answer, grade, modal_answer
from metacog_jax.data.records import Question

MC4 = Question(id="t/mc4", domain="t", split="test", question="Which animal is a common pet?",
               kind="multiple_choice", options=("Paris", "A cat", "London", "Rome"), answers=("B",))
MC10 = Question(id="t/mc10", domain="t", split="test", question="Pick.", kind="multiple_choice",
                options=tuple(f"choice {w}" for w in
                              "zero one two three four five six seven eight nine".split()),
                answers=("I",))
MCNUM = Question(id="t/mcnum", domain="comparison", split="test", question="Which is the largest?",
                 kind="multiple_choice", options=("3.9", "3.45", "3.125", "10"), answers=("D",))
NUM = Question(id="t/num", domain="t", split="test", question="How much?", kind="numeric", answers=("18",))
NEG = Question(id="t/neg", domain="t", split="test", question="How much?", kind="numeric", answers=("-7",))
DEC = Question(id="t/dec", domain="t", split="test", question="How much?", kind="numeric", answers=("0.75",))
OPEN = Question(id="t/open", domain="t", split="test", question="Capital of France?", kind="open",
                answers=("Paris", "Paris, France"))
DC = Question(id="t/dc", domain="t", split="test", question="US capital?", kind="open",
              answers=("Washington, D.C.",))
YNM = Question(id="t/ynm", domain="t", split="test", question="Does it?", kind="label",
               answers=("yes",), labels=("yes", "no", "maybe"))
YN = Question(id="t/yn", domain="t", split="test", question="Hearsay?", kind="label",
              answers=("No",), labels=("Yes", "No"))

CASES = [
    # ---- multiple choice: letter formats --------------------------------
    (MC4, "(B)", "B", True),
    (MC4, "B.", "B", True),
    (MC4, "B)", "B", True),
    (MC4, "B", "B", True),
    (MC4, "  b  ", "B", True),
    (MC4, "Answer: b", "B", True),
    (MC4, "The answer is B) A cat", "B", True),
    (MC4, "**B**", "B", True),
    (MC4, "The answer is: **B**", "B", True),
    (MC4, "I think it's option C", "C", False),
    (MC4, "I'd go with option B.", "B", True),
    (MC4, "Final answer: [B]", "B", True),
    (MC4, "\\boxed{B}", "B", True),
    (MC4, "Option B is correct.", "B", True),
    # ---- multiple choice: option text instead of letter -------------------
    (MC4, "A cat", "B", True),
    (MC4, "a cat.", "B", True),
    (MC4, "Rome", "D", False),
    # ---- multiple choice: the article "A" and pronoun "I" -----------------
    (MC4, "A cat is an animal many people keep, so the answer is B.", "B", True),
    (MC4, "A cat is a pet.", "B", True),
    (MC4, "It is a trick question, but London.", "C", False),
    (MC10, "The answer is I think (B)", "B", False),
    (MC10, "I.", "I", True),
    (MC10, "The answer is I", "I", True),
    (MC10, "I'm not sure, maybe the seventh one.", None, False),
    (MC10, "e-mail me", None, False),
    (MC10, "'I'", "I", True),
    (MC4, "A-levels are not relevant here.", None, False),
    (MC4, "The answer is a.", "A", False),
    # ---- multiple choice: last explicit statement, confidence, bad letters --
    (MC4, "Option A is wrong; the correct answer is (D).", "D", False),
    (MC4, "The answer is A. Wait, no: the answer is B.", "B", True),
    (MC4, "The answer is B and my confidence score is 0.85", "B", True),
    (MC4, "The answer is E", None, False),
    (MC4, "E", None, False),
    (MC4, "The answers differ, so I choose B", "B", True),
    (MC4, "Between (A) and (B), B is correct", "B", True),
    (MC4, "I'm not sure.", None, False),
    (MC4, "", None, False),
    (MC4, "e-mail me", None, False),
    (MC4, "A) Paris B) A cat C) London D) Rome", "A", False),  # echo: first letter leads
    (MCNUM, "10", "D", True),
    (MCNUM, "The largest is 3.9", "A", False),
    (MCNUM, "D) 10", "D", True),
    # ---- numeric ---------------------------------------------------------
    (NUM, "18", "18", True),
    (NUM, "$18", "18", True),
    (NUM, "18 dollars", "18", True),
    (NUM, "18.0", "18", True),
    (NUM, "18.00 km", "18", True),
    (NUM, "The answer is 18.", "18", True),
    (NUM, "#### 18", "18", True),
    (NUM, "She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = $18.", "18", True),
    (NUM, "The answer is 18 and my confidence score is 0.85", "18", True),
    (NUM, "Confidence: 90%\nAnswer: 18", "18", True),
    (NUM, "I am 90% confident it is 18", "18", True),
    (NUM, "The answer is 18 - 3 = 15.", "15", False),
    (NUM, "First 18 apples, then 20 were added, so 38.", "38", False),
    (NUM, "The total is 18. I double-checked: 20 - 2 = 18.", "18", True),
    (NUM, "1,018", "1018", False),
    (NUM, "\\boxed{18}", "18", True),
    (NUM, "The answer is eighteen", "18", True),
    (NUM, "no idea", None, False),
    (NUM, "The answer is unclear. We counted 18 apples", "18", True),
    (NUM, "18 - 3", "3", False),
    (NUM, "18%", "18", True),
    (NEG, "-7", "-7", True),
    (NEG, "Answer: −7", "-7", True),
    (NEG, "The temperature dropped to -7 degrees", "-7", True),
    (NEG, "10 - 7", "7", False),
    (DEC, "3/4", "0.75", True),
    (DEC, "0.750", "0.75", True),
    (DEC, "It costs $1,200.75 in total", "1200.75", False),
    # ---- open ------------------------------------------------------------
    (OPEN, "Paris", "paris", True),
    (OPEN, "The answer is Paris.", "paris", True),
    (OPEN, "I think it's Paris.", "paris", True),
    (OPEN, "**Paris**", "paris", True),
    (OPEN, "paris, france", "paris france", True),
    (OPEN, "The answer is Paris and my confidence score is 0.8", "paris", True),
    (OPEN, "Paris because it is the capital", "paris", True),
    (OPEN, "Answer: Paris\nExplanation: it is the seat of government.", "paris", True),
    (OPEN, "London", "london", False),
    (OPEN, "Parisian", "parisian", False),
    (OPEN, "...", None, False),
    (DC, "Washington, D.C. is the capital.", "washington dc is capital", False),
    (DC, "Answer: Washington, D.C.", "washington dc", True),
    (DC, "washington dc", "washington dc", True),
    # ---- label -----------------------------------------------------------
    (YNM, "Yes", "yes", True),
    (YNM, "YES.", "yes", True),
    (YNM, "no", "no", False),
    (YNM, "No doubt: the answer is yes.", "yes", True),
    (YNM, "Maybe, the evidence is mixed.", "maybe", False),
    (YNM, "I'm not sure", None, False),
    (YNM, "Nobody knows", None, False),
    (YNM, "Answer: **Yes**", "yes", True),
    (YN, "No", "No", True),
    (YN, "no, it is not hearsay", "No", True),
    (YN, "Yes - this is hearsay", "Yes", False),
    (YN, "This is non-assertive conduct, so the answer is No.", "No", True),
]


@pytest.mark.parametrize("question, response, expected, correct", CASES,
                         ids=[f"{q.id}:{r[:40]!r}" for q, r, _, _ in CASES])
def test_extract_and_grade(question, response, expected, correct):
    assert extract_answer(question, response) == expected
    assert grade(question, response) == Grade(normalized=expected, correct=correct)


def test_case_table_is_large():
    assert len(CASES) >= 60
    assert {q.kind for q, *_ in CASES} == {"multiple_choice", "numeric", "open", "label"}


@pytest.mark.parametrize("text, expected", [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("An apple a day", "apple day"),
    ("Jean-Paul Sartre", "jean paul sartre"),
    ("“Quoted”—text", "quoted text"),
])
def test_normalize_text(text, expected):
    assert grading.normalize_text(text) == expected


def test_f1_threshold_is_off_by_default():
    response = "The answer is Paris in France"
    assert not grade(OPEN, response).correct
    assert grading.token_f1("paris in france", "paris france") == pytest.approx(0.8)
    assert grade(OPEN, response, f1_threshold=0.75).correct
    assert not grade(OPEN, response, f1_threshold=0.9).correct


def test_judge_overrides_or_defers():
    calls = []

    def judge(question, response, extracted):
        calls.append((question.id, response, extracted))
        return None if "defer" in response else True

    assert grade(OPEN, "London", judge=judge) == Grade("london", True, judged=True)
    assert grade(OPEN, "defer: London", judge=judge) == Grade("defer london", False, judged=False)
    assert calls[0] == ("t/open", "London", "london")
    assert grade(OPEN, "London") == Grade("london", False)


@pytest.mark.parametrize("question, a, b, equal", [
    (NUM, "18", "18.0", True),
    (NUM, "18", "18.0000001", True),   # within the tolerance
    (NUM, "18", "18.01", False),
    (NUM, "1000000", "1000000.5", False),
    (MC4, "b", "B", True),
    (YN, "yes", "Yes", True),
    (OPEN, "paris", "paris france", False),
    (OPEN, None, None, False),
])
def test_answers_equal(question, a, b, equal):
    assert answers_equal(question, a, b) is equal


def test_modal_answer_for_self_consistency():
    samples = ["The answer is 18.", "#### 18.0", "17", None, "I get $18", "17"]
    extracted = [None if s is None else extract_answer(NUM, s) for s in samples]
    assert modal_answer(NUM, extracted) == ("18", 3)
    assert modal_answer(NUM, ["17", "18", "18", "17"]) == ("17", 2)  # tie: first seen
    assert modal_answer(NUM, [None, None]) == (None, 0)
    assert modal_answer(MC4, ["B", "C", "B"]) == ("B", 2)
    assert grading.is_correct(NUM, modal_answer(NUM, extracted)[0])
    assert grading.canonical_answer(NUM, "18.0000001") == grading.canonical_answer(NUM, "18")


def test_parse_number_forms():
    assert grading.parse_number("1,234.50") == grading.parse_number("1234.5")
    assert grading.canonical_number(grading.parse_number("-0.0")) == "0"
    assert grading.parse_number("1/0") is None
    assert grading.parse_number("none") is None
