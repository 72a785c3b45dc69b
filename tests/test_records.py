"""Question schema: validation, JSON round trip, JSONL errors; splits and subsampling."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from metacog_jax.data import splits
from metacog_jax.data.records import Question, RecordError, read_questions, write_questions


def mc(**overrides) -> Question:
    fields = dict(id="mmlu_pro/70", domain="mmlu_pro", split="train", question="Pick one.",
                  kind="multiple_choice", options=("x", "y", "z"), answers=("C",),
                  meta={"category": "business"})
    fields.update(overrides)
    return Question(**fields)


def test_valid_kinds_construct():
    mc()
    Question(id="g/1", domain="gsm8k", split="test", question="2+2?", kind="numeric", answers=("-4.5",))
    Question(id="n/1", domain="nq", split="test", question="who?", kind="open", answers=("Bob", "Robert"))
    Question(id="p/1", domain="pubmedqa", split="test", question="does it?", kind="label",
             answers=("maybe",), labels=("yes", "no", "maybe"), context="Abstract.")


def test_lists_become_tuples_and_meta_is_copied():
    meta = {"k": "v"}
    q = mc(options=["x", "y"], answers=["A"], meta=meta)
    assert q.options == ("x", "y") and q.answers == ("A",)
    meta["k"] = "changed"
    assert q.meta == {"k": "v"}


@pytest.mark.parametrize("overrides, field", [
    (dict(answers=("D",)), "answers"),                 # letter beyond 3 options
    (dict(answers=("a",)), "answers"),                 # letters are upper case
    (dict(answers=("A", "B")), "answers"),
    (dict(options=("only",), answers=("A",)), "options"),
    (dict(options=("x", ""), answers=("A",)), "options"),
    (dict(split="dev"), "split"),
    (dict(kind="essay"), "kind"),
    (dict(question="  "), "question"),
    (dict(id=""), "id"),
    (dict(meta={"n": 3}), "meta"),
    (dict(answers=()), "answers"),
    (dict(labels=("yes", "no")), "labels"),            # labels only for kind=label
])
def test_invalid_multiple_choice_names_field(overrides, field):
    with pytest.raises(RecordError, match=f"field '{field}'"):
        mc(**overrides)


@pytest.mark.parametrize("fields, field", [
    (dict(kind="numeric", answers=("1,000",)), "answers"),
    (dict(kind="numeric", answers=("18 dollars",)), "answers"),
    (dict(kind="numeric", answers=("18",), options=("a", "b")), "options"),
    (dict(kind="label", answers=("yes",), labels=("yes",)), "labels"),
    (dict(kind="label", answers=("Yes",), labels=("yes", "no")), "answers"),
    (dict(kind="label", answers=("yes",), labels=("yes", "YES")), "labels"),
    (dict(kind="open", answers=("",)), "answers"),
])
def test_invalid_other_kinds_name_field(fields, field):
    with pytest.raises(RecordError, match=f"field '{field}'"):
        Question(id="x/1", domain="x", split="test", question="q?", **fields)


def test_json_round_trip_and_hash():
    q = mc(context="ctx")
    d = q.to_json()
    assert json.loads(json.dumps(d)) == d
    again = Question.from_json(d)
    assert again == q and hash(again) == hash(q)
    assert len({q, again}) == 1


def test_from_json_reports_missing_and_unknown_fields():
    d = mc().to_json()
    del d["answers"]
    with pytest.raises(RecordError, match=r"missing field\(s\) \['answers'\]"):
        Question.from_json(d)
    d = mc().to_json() | {"answer": "C"}
    with pytest.raises(RecordError, match=r"unknown field\(s\) \['answer'\]"):
        Question.from_json(d)


def test_jsonl_round_trip(tmp_path):
    qs = [mc(id=f"mmlu_pro/{i}") for i in range(3)]
    path = tmp_path / "sub" / "q.jsonl"
    assert write_questions(path, qs) == 3
    assert read_questions(path) == qs
    assert [p.name for p in path.parent.iterdir()] == ["q.jsonl"]  # no temp file left


def test_read_questions_names_file_line_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    good = json.dumps(mc().to_json())
    bad = mc().to_json() | {"answers": ["Z"]}
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:3: .*field 'answers'"):
        read_questions(path)
    path.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError, match=rf"{path}:2: invalid JSON"):
        read_questions(path)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "q.jsonl"

    def broken():
        yield mc()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_questions(path, broken())
    assert list(tmp_path.iterdir()) == []


# ---- splits ---------------------------------------------------------------

def test_hash_unit_is_fixed():
    # The split of a question must never change across runs or machines:
    # check the documented construction and pin one value.
    digest = hashlib.sha256(b"split\x00gsm8k/test/0").digest()
    expected = int.from_bytes(digest[:8], "big") / 2**64
    assert splits.hash_unit("gsm8k/test/0", salt="split") == expected == 0.36648743583533516
    assert splits.assign_split("gsm8k/test/0") == "train"
    assert 0.0 <= splits.hash_unit("") < 1.0


def test_assign_split_fraction_and_monotonicity():
    ids = [f"d/{i}" for i in range(4000)]
    test15 = {i for i in ids if splits.assign_split(i, 0.15) == "test"}
    test30 = {i for i in ids if splits.assign_split(i, 0.30) == "test"}
    assert 0.13 < len(test15) / len(ids) < 0.17
    assert test15 <= test30
    assert all(splits.assign_split(i, 0.0) == "train" for i in ids[:50])
    assert all(splits.assign_split(i, 1.0) == "test" for i in ids[:50])
    with pytest.raises(ValueError, match="test_fraction"):
        splits.assign_split("x", 1.5)


def test_with_hashed_split():
    q = mc(id="gsm8k/test/0", split="test")
    assert splits.with_hashed_split(q).split == "train"
    assert splits.with_hashed_split(q, test_fraction=0.5).split == "test"


def test_subsample_deterministic_nested_order_free():
    qs = [mc(id=f"mmlu_pro/{i}") for i in range(200)]
    a = splits.subsample(qs, 20, seed=0)
    assert a == splits.subsample(qs, 20, seed=0)
    assert a == splits.subsample(list(reversed(qs)), 20, seed=0)[::-1]  # same set, input order kept
    assert set(a) <= set(splits.subsample(qs, 50, seed=0))
    assert set(a) != set(splits.subsample(qs, 20, seed=1))
    assert [q.id for q in a] == sorted((q.id for q in a), key=lambda s: int(s.split("/")[1]))
    assert splits.subsample(qs, None) == qs and splits.subsample(qs, 500) == qs
    assert splits.subsample(qs, 0) == []
    with pytest.raises(ValueError):
        splits.subsample(qs, -1)


def test_question_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        mc().split = "test"
