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


def _open(qid: str, question: str, *answers: str) -> Question:
    return Question(id=qid, domain="t", split="test", question=question, kind="open", answers=answers)


def _arith(expression: str, answer: str) -> Question:
    return Question(id=f"t/arith/{expression}", domain="arithmetic", split="test",
                    question=f"What is {expression}?", kind="numeric", answers=(answer,))


NAPSTER = _open("t/napster", "What was the first free music download website?", "Napster")
NAPOLEON = _open("t/napoleon", "Which Napoleon died in exile on Saint Helena?",
                 "Napoleon", "Napoleon I", "Napoleon Bonaparte")
# Questions and aliases from NQ-open dev (the responses are written by hand).
SEASONS = _open("nq/seasons", "how many seasons of the bastard executioner are there", "one", "one season")
VAMPIRE = _open("nq/vampire", "how many seasons of vampire diaries r there", "eight", "8")
HEAVY = _open("nq/heavy", "who wrote he ain't heavy he's my brother lyrics", "Bobby Scott", "Bob Russell")
FIFTY = _open("nq/fifty", "what are the three fifty shades of grey books",
              "Fifty Shades of Grey", "Fifty Shades Darker", "Fifty Shades Freed")
BATMAN = _open("nq/batman", "who came out first batman or spider man", "Batman")
MOON = _open("nq/moon", "when was the last time anyone was on the moon",
             "14 December 1972 UTC", "December 1972")
JOKER = _open("nq/joker", "who plays joker in batman the dark knight", "Ledger")
COLA = _open("nq/cola", "is coca cola a public or private company", "Public")
ARITH71 = _arith("7 * 1", "7")
ARITH31 = _arith("3 * 1", "3")
ARITH53 = _arith("5 + 3", "8")
ARITH6084 = _arith("60 + 84", "144")

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
    # ---- numeric: expressions after an answer phrase (adversarial) ---------
    # a copy of the question's expression is no answer (today: its first number)
    (ARITH71, "The answer is 7 * 1.", None, False),
    # the copy, then a stated result
    (ARITH71, "The answer is 7 * 1 = 7.", "7", True),
    # the copy, then a later number
    (ARITH71, "The answer is 7 * 1. So it is 7.", "7", True),
    # a commuted copy is still a copy
    (ARITH71, "The answer is 1 * 7.", None, False),
    # the model's own expression is evaluated
    (NUM, "The answer is 3 * 6.", "18", True),
    # parentheses
    (NUM, "The answer is (2 + 1) * 6", "18", True),
    # division sign
    (NUM, "The answer is 36 ÷ 2.", "18", True),
    # slash division with spaces
    (NUM, "The answer is 36 / 2", "18", True),
    # "x" as the multiplication sign
    (NUM, "The answer is 9 x 2.", "18", True),
    # LaTeX \times
    (NUM, "The answer is 9 \\times 2", "18", True),
    # an unspaced star is multiplication, not markdown (today read as 29)
    (NUM, "The answer is 2*9", "18", True),
    # an expression then units
    (NUM, "The answer is 20 - 2 apples", "18", True),
    # a leading negative number in the expression
    (NUM, "The answer is -3 + 21", "18", True),
    # thousands separator inside an expression
    (NUM, "The answer is 1,000 - 982", "18", True),
    # the stated result after "=" wins even when wrong
    (ARITH53, "The answer is 5 + 3 = 9.", "9", False),
    # "the answer to <copy> is X"
    (ARITH53, "The answer to 5 + 3 is 8.", "8", True),
    # the copy followed by ", which is X"
    (ARITH6084, "The answer is 60 + 84, which is 144.", "144", True),
    # a truncated expression after the phrase (real sample)
    (ARITH6084, "You're right, the answer is indeed 60 +", None, False),
    # a truncated quote of the question after the phrase (real sample)
    (ARITH53, "The answer to the question 'What is 5 +", None, False),
    # ---- numeric: echoed question skipped by position (adversarial) ------
    # the question echoed, then nothing (today: its last operand)
    (ARITH53, "What is 5 + 3? Let me think.", None, False),
    # just the question
    (ARITH53, "What is 5 + 3?", None, False),
    # just the expression
    (ARITH53, "5 + 3", None, False),
    # echo then a result
    (ARITH53, "5 + 3 = 8", "8", True),
    # echoed question then an echo with a result
    (ARITH53, "What is 5 + 3? 5 + 3 = 8.", "8", True),
    # the operator spelled out
    (ARITH53, "5 plus 3 equals 8", "8", True),
    # a bare correct answer
    (ARITH53, "8", "8", True),
    # a correct answer equal to an operand, after an echo
    (ARITH31, "3 * 1 = 3", "3", True),
    # a correct answer equal to an operand, no echo
    (ARITH31, "It is 3", "3", True),
    # a bare operand-valued answer
    (ARITH31, "3", "3", True),
    # an echo that includes a lead-in word, then a result
    (ARITH31, "It is 3 * 1 = 3", "3", True),
    # an echo with no result
    (ARITH31, "It is 3 * 1.", None, False),
    # the echo opens a how-to sentence (real sample)
    (ARITH6084, "To calculate 60 + 84, we can", None, False),
    # the echo in the middle of a sentence (real sample)
    (ARITH6084, "Let's add 60 + 84 to find", None, False),
    # the echo after a compliment (real sample)
    (ARITH6084, "An astute question. 60 + 84 indeed brings", None, False),
    # a truncated operand at the end (real sample)
    (ARITH6084, "To add the numbers in the given expression 60 +", None, False),
    # echo, then a chain of own steps
    (ARITH6084, "60 + 84 = 140 + 4 = 144", "144", True),
    # an answer stated, then checked with an echo
    (ARITH6084, "The answer is 144. To check: 60 + 84 = 144", "144", True),
    # the echo then a wrong result
    (ARITH6084, "60 + 84 = 140", "140", False),
    # an unspaced echo "60+84"
    (ARITH6084, "60+84 is 144", "144", True),
    # an unspaced "18-20" is a range, not a subtraction: its first number as before
    (NUM, "The answer is 18-20 apples", "18", True),
    # "####" followed by the model's own expression
    (NUM, "#### 3 * 6", "18", True),
    # "Three" of "Three hundred" is no answer once the echo "30 + 7" is skipped (real sample)
    (_arith("30 + 7", "37"), "Three hundred and thirty is 30 + 7 which", None, False),
    # "18x" (a factor, as in "18x faster") is not a cut-off product
    (NUM, "The answer is 18x.", "18", True),
    # markdown emphasis around the number still parses
    (NUM, "The answer is **18**.", "18", True),
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
    # Containment (the default): the alias inside a longer sentence is credited.
    (DC, "Washington, D.C. is the capital.", "washington dc is capital", True),
    (DC, "Answer: Washington, D.C.", "washington dc", True),
    (DC, "washington dc", "washington dc", True),
    # ---- open: containment, the default rule (adversarial) ----------------
    # chatty sentence: the alias sits inside a whole-sentence answer
    (NAPSTER, "The first free music download website was Napster, which launched in 1999.",
     "first free music download website was napster which launched in 1999", True),
    # bare alias with a full stop
    (NAPSTER, "Napster.", "napster", True),
    # hedging between two candidates with "or"
    (NAPSTER, "It was Napster or Kazaa.", "napster or kazaa", False),
    # "either X or Y"
    (NAPSTER, "Either Napster or Kazaa", "either napster or kazaa", False),
    # the alias as the second alternative
    (NAPSTER, "Kazaa or Napster", "kazaa or napster", False),
    # a list "X, Y and Z" of candidates: list commas kept as "|"
    (NAPSTER, "Napster, Kazaa and LimeWire", "napster | kazaa | and limewire", False),
    # a bare comma list "X, Y, Z"
    (NAPSTER, "Napster, Kazaa, LimeWire", "napster | kazaa | limewire", False),
    # a list with an Oxford comma after a lead-in clause
    (NAPSTER, "The first were Napster, Kazaa, and LimeWire.",
     "first were napster | kazaa | and limewire", False),
    # negation right before the alias
    (NAPSTER, "Not Napster, it was Kazaa.", "not napster it was kazaa", False),
    # contracted negation before the alias
    (NAPSTER, "It wasn't Napster but Kazaa.", "it wasnt napster but kazaa", False),
    # negation of the other candidate only: the alias is stated
    (NAPSTER, "Napster, not Kazaa.", "napster not kazaa", True),
    # the answer phrase followed by a negated alias
    (NAPSTER, "The answer is not Napster.", "not napster", False),
    # a hedge word before the alias is not a negation
    (NAPSTER, "I'm not sure, maybe Napster.", "im not sure maybe napster", True),
    # "X, followed by Y and Z" names later sites, not rival answers: no list
    (NAPSTER, "Napster was the first, followed by Kazaa and LimeWire.",
     "napster was first followed by kazaa and limewire", True),
    # the same with the alias right before the comma
    (NAPSTER, "The first was Napster, followed by Kazaa and LimeWire.",
     "first was napster followed by kazaa and limewire", True),
    # "X and Y" without commas is not a list (co-authors, band names): credited
    (NAPSTER, "Napster and Kazaa", "napster and kazaa", True),
    # known false positive: the alias named as context of another answer
    (NAPSTER, "Kazaa, which replaced Napster.", "kazaa which replaced napster", True),
    # the response opens by echoing the question: the echo sentence is skipped
    (NAPSTER, "What was the first free music download website? Napster.", "napster", True),
    # a first "sentence" of punctuation only is skipped
    (NAPSTER, "?? Napster", "napster", True),
    # the echoed question on its own line, then the answer
    (NAPSTER, "What was the first free music download website?\nIt was Napster.", "napster", True),
    # alias inside a longer name: whole-word containment credits it (documented)
    (OPEN, "Paris Hilton", "paris hilton", True),
    # a common word ("one") before the alias does not matter
    (OPEN, "One of the largest cities in Europe is Paris.",
     "one of largest cities in europe is paris", True),
    # apposition "X, the ..., is ..." is not a list
    (OPEN, "Paris, the capital of France, is the largest city.",
     "paris capital of france is largest city", True),
    # a list of three cities with "or"
    (OPEN, "Paris, Lyon or Marseille", "paris | lyon | or marseille", False),
    # the answer repeats the question's words, then the alias
    (OPEN, "The capital of France is Paris.", "capital of france is paris", True),
    # a hedge "I'd say X, but ..." keeps the alias
    (OPEN, "I'd say Paris, but I'm not sure.", "id say paris but im not sure", True),
    # negation then a different answer after a semicolon
    (OPEN, "Not Paris; the capital is Lyon.", "not paris capital is lyon", False),
    # "rather than X" negates the alias
    (OPEN, "Rather than Paris, I would say Lyon.", "rather than paris i would say lyon", False),
    # alias in the question: containment proves nothing, the whole answer must be the alias
    (NAPOLEON, "Napoleon III", "napoleon iii", False),
    # the question's word echoed, the answer is a different Napoleon
    (NAPOLEON, "The Napoleon who died on Saint Helena was Napoleon III.",
     "napoleon who died on saint helena was napoleon iii", False),
    # alias in the question, answer is exactly it
    (NAPOLEON, "It was Napoleon.", "napoleon", True),
    # a longer alias that is not in the question is contained
    (NAPOLEON, "Napoleon Bonaparte, the French emperor.", "napoleon bonaparte french emperor", True),
    # NQ: the number alias inside a sentence
    (SEASONS, "The Bastard Executioner ran for only one season.",
     "bastard executioner ran for only one season", True),
    # NQ: "one of" is an idiom, not the number one
    (SEASONS, "One of FX's most expensive dramas, it had two seasons.",
     "one of fxs most expensive dramas it had two seasons", False),
    # NQ: digits for a spelled-out alias ("1 season" vs "one season")
    (SEASONS, "It had 1 season.", "it had 1 season", True),
    # NQ: digits alias in a sentence
    (VAMPIRE, "There are 8 seasons of The Vampire Diaries.", "there are 8 seasons of vampire diaries", True),
    # NQ: spelled-out alias in a sentence
    (VAMPIRE, "There are eight seasons.", "there are eight seasons", True),
    # NQ: two numbers offered as alternatives
    (VAMPIRE, "Seven or eight seasons.", "seven or eight seasons", False),
    # NQ: two correct co-writers joined by "and"
    (HEAVY, "Bobby Scott and Bob Russell wrote it.", "bobby scott and bob russell wrote it", True),
    # NQ: a list with a wrong third writer is a list of candidates
    (HEAVY, "Bobby Scott, Bob Russell and Hal David", "bobby scott | bob russell | and hal david", False),
    # NQ: a list question: every listed item is a gold alias
    (FIFTY, "Fifty Shades of Grey, Fifty Shades Darker and Fifty Shades Freed.",
     "fifty shades of grey | fifty shades darker | and fifty shades freed", True),
    # NQ: alias in a two-option question, stated in a sentence: not credited (exact needed)
    (BATMAN, "Batman came out first.", "batman came out first", False),
    # NQ: the wrong option with the alias as the comparison term
    (BATMAN, "Spider-Man came out before Batman.", "spider man came out before batman", False),
    # NQ: alias in the question, answer exactly it
    (BATMAN, "Batman.", "batman", True),
    # NQ: echo of "public or private" does not credit "public"
    (COLA, "It is a public or private company.", "public or private company", False),
    # NQ: alias in the question and the answer is it after a lead-in
    (COLA, "It's public.", "public", True),
    # NQ: a date alias inside a chatty sentence
    (MOON, "The last moonwalk was in December 1972, during Apollo 17.",
     "last moonwalk was in december 1972 during apollo 17", True),
    # NQ: two dates as alternatives
    (MOON, "December 1972 or January 1973", "december 1972 or january 1973", False),
    # NQ: a surname alias inside the full name
    (JOKER, "Heath Ledger played the Joker.", "heath ledger played joker", True),
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
    # every dash separates words, the non-breaking hyphen and the minus sign too
    ("Jay\u2011Z", "jay z"),
    ("Coca\u2212Cola", "coca cola"),
    # numbers keep their decimal point and sign, not thousands commas
    ("2.5 million", "2.5 million"),
    ("Pi is 3.14.", "pi is 3.14"),
    ("-5 degrees", "-5 degrees"),
    ("\u22125 or \u20135", "-5 or -5"),
    ("about .5, or -.5", "about .5 or -.5"),
    ("1,000 people", "1000 people"),
    ("U.S.A.", "usa"),
])
def test_normalize_text(text, expected):
    assert grading.normalize_text(text) == expected


@pytest.mark.parametrize("gold, response, correct", [
    ("2.5 million", "25 million", False),
    ("2.5 million", "about 2.5 million", True),
    ("-5", "5", False),
    ("-5", "-5", True),
    ("Jay-Z", "Jay\u2011Z", True),
])
def test_open_answers_tell_numbers_apart(gold, response, correct):
    question = _open("t/num-open", "How many?", gold)
    assert grade(question, response).correct is correct


@pytest.mark.parametrize("response, gold, correct", [
    ("The answer is \u00bd.", "0.5", True),
    ("The answer is \u00bd.", "1", False),
    ("The answer is 2\u00bd.", "2.5", True),
    ("The answer is 2\u00bd.", "21", False),
    ("It takes 2 \u00bd hours", "2.5", True),
    ("So the share is \u00bc", "4", False),
    ("The answer is 1\u20442.", "0.5", True),
    ("The answer is \u20135.", "-5", True),
    ("The answer is \u20135.", "5", False),
])
def test_unicode_fractions_and_dashes_in_numeric_answers(response, gold, correct):
    question = Question(id="t/u", domain="t", split="test", question="How much?", kind="numeric", answers=(gold,))
    assert grading.is_correct(question, extract_answer(question, response)) is correct


def test_open_rules():
    assert grading.OPEN_RULES == ("containment", "exact", "f1")
    assert grading.DEFAULT_OPEN_RULE == "containment"
    response = "The answer is Paris in France"
    assert grade(OPEN, response).correct  # containment
    assert not grade(OPEN, response, rule="exact").correct
    assert grading.token_f1("paris in france", "paris france") == pytest.approx(0.8)
    assert grading.token_f1("paris in france", "paris") == pytest.approx(0.5)
    assert grade(OPEN, response, rule="f1").correct  # default threshold 0.5
    assert grade(OPEN, response, rule="f1", f1_threshold=0.75).correct
    assert not grade(OPEN, "The answer is Paris in southern Europe", rule="f1", f1_threshold=0.75).correct
    # f1 and exact ignore list separators; containment refuses the list.
    assert grading.is_correct(OPEN, "paris | france", rule="exact")
    assert grading.is_correct(NAPSTER, "napster | kazaa", rule="f1", f1_threshold=0.6)
    assert not grading.is_correct(NAPSTER, "napster | kazaa")
    # Backward-compatible call forms.
    assert grading.is_correct(OPEN, "paris")
    assert grade(OPEN, "Paris", f1_threshold=0.75).correct


@pytest.mark.parametrize("kwargs, message", [
    (dict(rule="fuzzy"), r"unknown open-answer rule 'fuzzy'; choose one of containment, exact, f1"),
    (dict(f1_threshold=None), r"f1_threshold must be a number in \(0, 1\], got None"),
    (dict(f1_threshold=0), r"got 0"),
    (dict(f1_threshold=1.5), r"got 1.5"),
])
def test_bad_rule_or_threshold_is_named(kwargs, message):
    for question in (OPEN, NUM):  # checked for every kind, not only open
        with pytest.raises(ValueError, match=message):
            grading.is_correct(question, "paris", **kwargs)
        with pytest.raises(ValueError, match=message):
            grade(question, "Paris", **kwargs)


def test_list_separator_survives_normalization_and_modal_answer():
    samples = ["Napster, Kazaa and LimeWire", "napster, kazaa, and limewire.", "Napster"]
    extracted = [extract_answer(NAPSTER, s) for s in samples]
    assert extracted == ["napster | kazaa | and limewire", "napster | kazaa | and limewire", "napster"]
    modal, count = modal_answer(NAPSTER, extracted)
    assert (modal, count) == ("napster | kazaa | and limewire", 2)
    assert not grading.is_correct(NAPSTER, modal)  # the list stays a list after the vote
    assert grading.plain_answer(modal) == "napster kazaa and limewire"
    # Two samples saying the same sentence, with or without the list marks, are one answer.
    assert answers_equal(NAPSTER, "napster | kazaa", "napster kazaa")
    assert not answers_equal(NAPSTER, "napster | kazaa", "napster")


@pytest.mark.parametrize("text, value, end", [
    ("2 + 3 * 4", "14", 9),
    ("(2 + 3) * 4", "20", 11),
    ("10 / 4", "2.5", 6),
    ("1 / 3", "0.333333333333", 5),
    ("2 - -3", "5", 6),
    ("3 + 4 apples", "7", 5),
    ("6 ÷ 2 x 3", "9", 9),
    ("$1,000 - 982", "18", 12),
    ("5 / 0", None, 5),
    ("60 +", None, 4),
    ("(2 + 3", None, 6),
])
def test_own_arithmetic_parser(text, value, end):
    expression = grading._parse_expression(text, 0, len(text))
    assert (None if expression.value is None else grading.canonical_number(expression.value)) == value
    assert expression.end == end


def test_echo_spans_are_found_by_position():
    question = grading._echo_tokens("What is 5 + 3?")
    text = "What is 5 + 3? Well, 5 + 3 = 8 and 3 is an operand."
    spans = grading._echo_spans(text, question)
    assert [text[a:b] for a, b in spans] == ["What is 5 + 3", "5 + 3"]


@pytest.mark.parametrize("question, a, b, equal", [
    (NUM, "18", "18.0", True),
    (NUM, "18", "18.0000001", True),   # within the tolerance
    (NUM, "18", "18.01", False),
    (NUM, "1000000", "1000000.5", False),
    (DEC, "0.0000001", "0", False),    # below 1 the tolerance is relative
    (DEC, "0.0000005", "0.0000009", False),
    (DEC, "0.333333333333", "0.3333333", True),
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
    assert grading.canonical_answer(DEC, "0.0000005") != grading.canonical_answer(DEC, "0.0000009")
    assert grading.canonical_answer(DEC, "0.33333333") == grading.canonical_answer(DEC, "0.333333333")


def test_parse_number_forms():
    assert grading.parse_number("1,234.50") == grading.parse_number("1234.5")
    assert grading.canonical_number(grading.parse_number("-0.0")) == "0"
    assert grading.parse_number("1/0") is None
    assert grading.parse_number("none") is None
