"""Question sets declared in the config (data.custom.<name>): made-up files in the common layouts, read
through the same TFDS builder path as the built-in sets; ids, splits, rebuilds, errors, the hub path with
the client mocked, and `metacog sample` on a config file that declares a set."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metacog_jax.data.sources import custom_domains, domain_info, load_questions
from metacog_jax.data.sources.base import MalformedRecordError, MissingSourceError
from metacog_jax.data.sources.custom import read_custom, source_files, spec_from_config
from metacog_jax.experiment_config import default_config, validate


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def declare(name: str = "mine", **settings) -> ml_collections.ConfigDict:
    """A `config.data.custom` holding one set."""
    return ml_collections.ConfigDict({name: settings})


def load(tmp_path: Path, split: str = "all", name: str = "mine", **settings):
    return load_questions(name, None, tmp_path / "tfds", split, custom=declare(name, **settings))


def read_rows(**settings):
    """Parse a set without building it (the row errors are the same)."""
    spec = spec_from_config("mine", ml_collections.ConfigDict(settings))
    return [q for _, q in read_custom(spec, source_files(spec))]


# -- the common layouts ---------------------------------------------------------------------------------------
MMLU_ROWS = [
    {"question": f"Made-up question {i}?", "subject": "astronomy" if i % 2 else "botany",
     "choices": [f"w{i}", f"x{i}", f"y{i}", f"z{i}"], "answer": i % 4}
    for i in range(40)
]


def test_mmlu_layout_jsonl_choices_list_and_answer_index(tmp_path):
    path = write_jsonl(tmp_path / "mmlu_like.jsonl", MMLU_ROWS)
    settings = dict(path=str(path), kind="multiple_choice", test_fraction=0.25,
                    fields=dict(options="choices", answer_type="index", category="subject"))
    questions = load(tmp_path, **settings)
    assert len(questions) == 40
    q = questions[6]
    assert q.domain == "mine" and q.kind == "multiple_choice"
    assert q.question == "Made-up question 6?" and q.options == ("w6", "x6", "y6", "z6") and q.answers == ("C",)
    assert q.meta["category"] == "botany" and q.meta["source"] == "mmlu_like.jsonl:7"
    assert [x.answers[0] for x in questions[:5]] == ["A", "B", "C", "D", "A"]
    # Without an id field the id is <name>/<file sha8>/<row>; test_fraction hashes ids into test.
    assert all(x.id.startswith("mine/") and x.id.endswith(f"/{i}") for i, x in enumerate(questions))
    test = load(tmp_path, "test", **settings)
    train = load(tmp_path, "train", **settings)
    assert 0 < len(test) < 20 and len(test) + len(train) == 40
    assert {x.id for x in test} | {x.id for x in train} == {x.id for x in questions}


CSV_TEXT = (
    'id,question,A,B,C,D,answer,split\n'
    'q1,"Which planet is called ""red""?",Venus,Mars,Jupiter,Saturn,b,train\n'
    'q2,"A question over\n'
    'two lines, with a comma",one,two,three,,C,dev\n'
    'q3,Plain question,"op, with comma",other,,,A,Test\n'
    'q4,Another one,p,q,r,s,D,validation\n'
)


def test_csv_option_columns_letter_answer_quoting_and_split_field(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("\ufeff" + CSV_TEXT, encoding="utf-8")  # a byte-order mark, as spreadsheets write
    settings = dict(path=str(path), kind="multiple_choice",
                    fields=dict(options=("A", "B", "C", "D"), answer_type="letter", id="id", split="split"))
    questions = load(tmp_path, **settings)
    assert [q.id for q in questions] == ["mine/q1", "mine/q2", "mine/q4", "mine/q3"]  # train rows, then test
    by_id = {q.id: q for q in questions}
    assert by_id["mine/q1"].question == 'Which planet is called "red"?' and by_id["mine/q1"].answers == ("B",)
    q2 = by_id["mine/q2"]
    assert q2.question == "A question over\ntwo lines, with a comma"
    assert q2.options == ("one", "two", "three") and q2.answers == ("C",)  # the empty D column is dropped
    assert q2.meta["source"] == "mine.csv:4"  # the physical line on which the row ends
    assert by_id["mine/q3"].options == ("op, with comma", "other")
    assert {q.id: q.split for q in questions} == {"mine/q1": "train", "mine/q2": "train", "mine/q3": "test",
                                                  "mine/q4": "train"}
    assert by_id["mine/q3"].meta["source_split"] == "Test"
    assert [q.id for q in load(tmp_path, "test", **settings)] == ["mine/q3"]


def test_open_questions_with_aliases_list_or_one_string(tmp_path):
    path = write_jsonl(tmp_path / "open.jsonl", [
        {"q": "Capital of Made-up Land?", "gold": ["Fooville", "Foo City"], "passage": "Fooville is big."},
        {"q": "Colour of the made-up sky?", "gold": "teal"},
    ])
    questions = read_rows(path=str(path), kind="open", fields=dict(question="q", answer="gold", context="passage"))
    assert [q.answers for q in questions] == [("Fooville", "Foo City"), ("teal",)]
    assert questions[0].context == "Fooville is big." and questions[1].context == ""
    nested = write_jsonl(tmp_path / "nested.jsonl", [{"question": "Made-up river?", "answer": {"aliases": ["Blue"]}}])
    assert read_rows(path=str(nested), kind="open", fields=dict(answer="answer.aliases"))[0].answers == ("Blue",)
    csv_path = tmp_path / "open.csv"
    csv_path.write_text('question,answer\nWho?,"[""Ann"", ""Anne""]"\nWhat?,a thing\n', encoding="utf-8")
    assert [q.answers for q in read_rows(path=str(csv_path), kind="open")] == [("Ann", "Anne"), ("a thing",)]


def test_numeric_answers_become_canonical_numbers(tmp_path):
    path = write_jsonl(tmp_path / "num.jsonl", [
        {"question": "a?", "answer": 7}, {"question": "b?", "answer": 2.50}, {"question": "c?", "answer": "1,234.50"},
        {"question": "d?", "answer": "-3"}, {"question": "e?", "answer": 1e-7},
    ])
    questions = read_rows(path=str(path), kind="numeric")
    assert [q.answers[0] for q in questions] == ["7", "2.5", "1234.5", "-3", "0.0000001"]
    assert all(q.kind == "numeric" for q in questions)


def test_label_kind_reads_label_text_or_index(tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", [{"question": "Is it so?", "answer": "YES"},
                                                   {"question": "Is it not?", "answer": "no"}])
    questions = read_rows(path=str(path), kind="label", labels=("yes", "no"))
    assert [q.answers for q in questions] == [("yes",), ("no",)] and questions[0].labels == ("yes", "no")
    write_jsonl(path, [{"question": "Is it so?", "answer": 1}])
    assert read_rows(path=str(path), kind="label", labels=("yes", "no"),
                     fields=dict(answer_type="index"))[0].answers == ("no",)


def write_shards(folder: Path, prefix: str = "train", n_shards: int = 2, per_shard: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        rows = [{"question": f"shard {s} question {i}?", "options": ["red", "green", "blue"],
                 "answer": ["red", "green", "blue"][i % 3], "qid": f"{prefix}{s}-{i}"} for i in range(per_shard)]
        path = folder / f"{prefix}-{s:05d}-of-{n_shards:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths


def test_parquet_folder_of_shards_in_sorted_order(tmp_path):
    write_shards(tmp_path / "shards")
    (tmp_path / "shards" / "README.md").write_text("not data")
    settings = dict(path=str(tmp_path / "shards"), kind="multiple_choice",
                    fields=dict(options="options", answer_type="option_text", id="qid"))
    questions = load(tmp_path, **settings)
    assert [q.id for q in questions] == [f"mine/train{s}-{i}" for s in range(2) for i in range(3)]
    assert [q.answers[0] for q in questions[:3]] == ["A", "B", "C"]
    assert questions[4].meta["source"] == "train-00001-of-00002.parquet[row 1]"


# -- ids, caching and rebuilds --------------------------------------------------------------------------------
def built_configs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "tfds" / "metacog_custom").iterdir())


def test_ids_are_stable_and_an_edited_file_rebuilds(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", MMLU_ROWS[:6])
    custom = declare(path=str(path), kind="multiple_choice", fields=dict(options="choices", answer_type="index"))
    first = load_questions("mine", None, tmp_path / "tfds", "all", custom=custom)
    (builder,) = _builders(tmp_path, custom)
    assert builder.builder_config.name.startswith("mine_") and len(builder.builder_config.name) == len("mine_") + 12
    built = tmp_path / "tfds" / "metacog_custom" / builder.builder_config.name / "1.0.0"
    stamp = built.stat().st_mtime_ns
    again = load_questions("mine", None, tmp_path / "tfds", "all", custom=custom)
    assert again == first and built.stat().st_mtime_ns == stamp  # read, not rebuilt
    assert built_configs(tmp_path) == [builder.builder_config.name]

    write_jsonl(path, MMLU_ROWS[:5] + [dict(MMLU_ROWS[5], question="An edited question?")])
    edited = load_questions("mine", None, tmp_path / "tfds", "all", custom=custom)
    assert len(built_configs(tmp_path)) == 2 and edited[-1].question == "An edited question?"
    file_hashes = {q.id.split("/")[1] for q in first} ^ {q.id.split("/")[1] for q in edited}
    assert len(file_hashes) == 2  # ids without an id field carry the file's hash

    # A changed field map changes the build too, with the same bytes.
    custom.mine.fields.category = "subject"
    load_questions("mine", None, tmp_path / "tfds", "all", custom=custom)
    assert len(built_configs(tmp_path)) == 3


def _builders(tmp_path, custom):
    from metacog_jax.data.sources import builders

    return builders("mine", None, tmp_path / "tfds", custom)


def test_domain_info_knows_custom_sets(tmp_path):
    custom = declare(path="x.csv", kind="numeric", role="out_of_domain")
    info = domain_info("mine", custom)
    assert (info.kind, info.role, info.procedural) == ("numeric", "out_of_domain", False)
    assert info.custom.fields.answer_type == "number"
    assert domain_info("gsm8k", custom).custom is None
    with pytest.raises(ValueError, match=r"unknown domain 'mine'.*gsm8k"):
        domain_info("mine")
    with pytest.raises(ValueError, match=r"data\.custom\.gsm8k: 'gsm8k' is a built-in domain"):
        custom_domains(declare("gsm8k", path="x.csv", kind="numeric"))


# -- malformed rows name file:line and the field ---------------------------------------------------------------
MC = dict(kind="multiple_choice", fields=dict(options=("A", "B", "C", "D"), answer_type="letter"))
CSV_HEAD = "question,A,B,C,D,answer\n"


@pytest.mark.parametrize("body, settings, expected", [
    (CSV_HEAD + "ok?,a,b,c,d,A\nbad?,a,b,c,d,E\n", MC,
     r"bad\.csv:3: field 'answer' \(answer_type letter\) is 'E'; expected one of the 4 option letters ABCD"),
    (CSV_HEAD + '"two\nlines",a,b,,,C\n', MC,
     r"bad\.csv:3: field 'answer' \(answer_type letter\) is 'C'; expected one of the 2 option letters AB"),
    ("question,A,B,C,D\nq?,a,b,c,d\n", MC, r"bad\.csv:1: header lacks column\(s\) \['answer'\]"),
    (CSV_HEAD + " ,a,b,c,d,A\n", MC, r"bad\.csv:2: field 'question' \(the question\) is empty"),
    (CSV_HEAD + "q?,a,,c,d,A\n", MC, r"bad\.csv:2: field 'B' \(option B\) is empty, but a later option is not"),
    (CSV_HEAD + "q?,a,b,c,d,A,extra\n", MC, r"bad\.csv:2: row has 7 values but the header has 6 columns"),
    ("question,A,B,C,D,answer,answer\nq?,a,b,c,d,A,B\n", MC,
     r"bad\.csv:1: the header names column\(s\) \['answer'\] more than once"),
    (CSV_HEAD + "q?,a,b,c,d,1\n", MC, r"bad\.csv:2: .* is '1'; expected one of .* \(use answer_type 'index' for numbers\)"),
    ("question,answer\nq?,five\n", dict(kind="numeric"),
     r"bad\.csv:2: field 'answer' \(answer_type number\) is 'five', not a number"),
    ("question,answer,split\nq?,1,holdout\n", dict(kind="numeric", fields=dict(split="split")),
     r"bad\.csv:2: field 'split' \(the split\) is 'holdout'; known values: train \(train, .*\), test \(test"),
    ("id,question,answer\n7,a?,1\n7,b?,2\n", dict(kind="numeric", fields=dict(id="id")),
     r"bad\.csv:3: duplicate id 'mine/7' \(field 'id'; first at .*bad\.csv:2\)"),
])
def test_malformed_csv_rows_name_the_line_and_field(tmp_path, body, settings, expected):
    path = tmp_path / "bad.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(MalformedRecordError, match=expected):
        read_rows(path=str(path), **settings)


@pytest.mark.parametrize("row, settings, expected", [
    ({"question": "q?", "choices": ["a", "b", "c"], "answer": 3},
     dict(kind="multiple_choice", fields=dict(options="choices", answer_type="index")),
     r"bad\.jsonl:2: field 'answer' \(answer_type index, 0-based\) is 3, but the question has 3 options \(0-2\)"),
    ({"question": "q?", "choices": ["a", "b"]}, dict(kind="multiple_choice", fields=dict(options="choices")),
     r"bad\.jsonl:2: missing field 'answer'"),
    ({"question": "q?", "choices": "a, b", "answer": "A"}, dict(kind="multiple_choice", fields=dict(options="choices")),
     r"bad\.jsonl:2: field 'choices' \(options\) must be a list"),
    ({"question": "", "answer": 3}, dict(kind="numeric"), r"bad\.jsonl:2: field 'question' \(the question\) is empty"),
    ({"question": "q?", "answer": "about 3"}, dict(kind="numeric"),
     r"bad\.jsonl:2: field 'answer' \(answer_type number\) is 'about 3', not a number"),
    ({"question": "q?", "answer": "perhaps"}, dict(kind="label", labels=("yes", "no")),
     r"bad\.jsonl:2: field 'answer' \(answer_type option_text\) is 'perhaps', which is none of the labels"),
    ({"question": "q?", "choices": ["Paris", "paris", "Rome"], "answer": "PARIS"},
     dict(kind="multiple_choice", fields=dict(options="choices", answer_type="option_text")),
     r"bad\.jsonl:2: .* is 'PARIS', which matches more than one of the options: 0 \('Paris'\), 1 \('paris'\)"),
    ({"question": "q?", "answer": ["Jay-Z", "—"]}, dict(kind="open"),
     r"bad\.jsonl:2: field 'answer' \(aliases\) has \['—'\], which is only punctuation, articles or spaces"),
])
def test_malformed_jsonl_rows_name_the_line_and_field(tmp_path, row, settings, expected):
    good_answer = {"label": "yes", "multiple_choice": "B", "open": "fine"}.get(settings["kind"], 1)
    if settings.get("fields", {}).get("answer_type") == "index":
        good_answer = 1
    good = {"question": "fine?", "choices": ["a", "b", "c"], "answer": good_answer}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(MalformedRecordError, match=expected):
        read_rows(path=str(path), **settings)


def test_malformed_parquet_row_and_missing_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "a?", "answer": "1"}, {"question": "b?", "answer": "x"}]), path)
    with pytest.raises(MalformedRecordError, match=r"bad\.parquet\[row 1\]: field 'answer' \(answer_type number\)"):
        read_rows(path=str(path), kind="numeric")
    with pytest.raises(MalformedRecordError, match=r"bad\.parquet: no column\(s\) \['gold'\]; the file has"):
        read_rows(path=str(path), kind="numeric", fields=dict(answer="gold"))


def test_option_text_answers_match_exactly_before_ignoring_case(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "q?", "choices": ["Paris", "paris", "Rome"], "answer": "paris"},
                                              {"question": "r?", "choices": ["Paris", "Rome"], "answer": "ROME"}])
    rows = read_rows(path=str(path), kind="multiple_choice", fields=dict(options="choices", answer_type="option_text"))
    assert [q.answers for q in rows] == [("B",), ("B",)]


def test_a_jsonl_alias_may_start_with_a_bracket(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Which tag?", "answer": "[citation needed]"},
                                              {"question": "Which tags?", "answer": ["[sic]", "sic"]}])
    assert [q.answers for q in read_rows(path=str(path), kind="open")] == [("[citation needed]",), ("[sic]", "sic")]


def test_parquet_decimal_gold_numbers(tmp_path):
    from decimal import Decimal

    path = tmp_path / "q.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "a?", "answer": Decimal("12.50")}]), path)
    assert [q.answers for q in read_rows(path=str(path), kind="numeric")] == [("12.5",)]


@pytest.mark.parametrize("name, content, expected", [
    ("latin1.csv", "question,answer\ncaf\u00e9?,1\n".encode("latin-1"),
     r"latin1\.csv: not UTF-8 text \(byte 0xe9: invalid continuation byte\); save the file as UTF-8"),
    ("utf16.jsonl", '{"question": "q?", "answer": 1}\n'.encode("utf-16"), r"utf16\.jsonl: not UTF-8 text \(byte 0xff"),
    ("text.parquet", b"question,answer\nq?,1\n", r"text\.parquet: not a readable Parquet file"),
])
def test_files_that_cannot_be_decoded_are_named(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MalformedRecordError, match=expected):
        read_rows(path=str(path), kind="numeric")


def test_a_bad_row_fails_the_build_and_leaves_nothing(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(CSV_HEAD + "q?,a,b,c,d,Z\n", encoding="utf-8")
    with pytest.raises(MalformedRecordError, match=r"bad\.csv:2: field 'answer'"):
        load(tmp_path, path=str(path), **MC)
    assert not list((tmp_path / "tfds").rglob("*"))  # not even an empty folder


def test_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(MissingSourceError, match=r"data\.custom\.mine\.path: .*nowhere\.csv does not exist"):
        load(tmp_path, path=str(tmp_path / "nowhere.csv"), kind="numeric")
    (tmp_path / "q.txt").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*q\.txt.*set data\.custom\.mine\.format"):
        load(tmp_path, path=str(tmp_path / "q.txt"), kind="numeric")
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.csv").write_text("question,answer\nq?,1\n")
    write_jsonl(tmp_path / "mixed" / "b.jsonl", [{"question": "q?", "answer": 1}])
    with pytest.raises(ValueError, match=r"several formats \(csv, jsonl\); set data\.custom\.mine\.format"):
        load(tmp_path, path=str(tmp_path / "mixed"), kind="numeric")
    assert [q.answers for q in load(tmp_path, path=str(tmp_path / "mixed"), kind="numeric", format="csv")] == [("1",)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingSourceError, match=r"no files of a known format"):
        load(tmp_path, path=str(tmp_path / "empty"), kind="numeric")


# -- config validation ----------------------------------------------------------------------------------------
def config_with(name="mine", domains=("mine",), ood=(), **settings):
    c = default_config()
    c.data.custom[name] = ml_collections.ConfigDict(settings)
    c.data.domains, c.data.ood_domains = domains, ood
    return c


OK = dict(path="q.csv", kind="numeric")


@pytest.mark.parametrize("settings, expected", [
    (dict(OK, feilds=dict()), r"data\.custom\.mine\.feilds: unknown key; did you mean 'fields'\?"),
    (dict(kind="numeric"), r"data\.custom\.mine\.path is required"),
    (dict(path="q.csv"), r"data\.custom\.mine\.kind is required"),
    (dict(OK, kind="mcq"), r"data\.custom\.mine\.kind='mcq'; choose one of multiple_choice"),
    (dict(OK, format="xlsx"), r"data\.custom\.mine\.format='xlsx'; choose one of '', jsonl, csv, parquet"),
    (dict(OK, fields=dict(answer_type="letters")), r"data\.custom\.mine\.fields\.answer_type='letters'; choose"),
    (dict(OK, fields=dict(answer_type="letter")),
     r"data\.custom\.mine\.fields\.answer_type='letter' does not fit kind 'numeric'; choose one of number"),
    (dict(OK, fields=dict(qestion="q")), r"data\.custom\.mine\.fields\.qestion: unknown key; did you mean 'question'"),
    (dict(OK, kind="multiple_choice"), r"data\.custom\.mine\.fields\.options is required for kind 'multiple_choice'"),
    (dict(OK, kind="label"), r"data\.custom\.mine\.labels=\(\): kind 'label' needs two or more labels"),
    (dict(OK, labels=("a", "b")), r"data\.custom\.mine\.labels is only for kind 'label'"),
    (dict(OK, role="ood"), r"data\.custom\.mine\.role='ood'; choose one of in_domain, out_of_domain"),
    (dict(OK, test_fraction=1.5), r"data\.custom\.mine\.test_fraction=1\.5 must be a number in \[0, 1\]"),
    (dict(OK, test_fraction=0.2, fields=dict(split="split")), r"data\.custom\.mine\.test_fraction is set, but"),
    (dict(OK, revision="main"), r"data\.custom\.mine\.revision is only for hub paths"),
    (dict(OK, path="hf://just-a-name"), r"data\.custom\.mine\.path='hf://just-a-name': a hub path is hf://"),
])
def test_config_validation_names_the_field(settings, expected):
    with pytest.raises(ValueError, match=expected):
        validate(config_with(**settings))


def test_misspelled_domain_names_fail_validation_with_a_suggestion():
    with pytest.raises(ValueError, match=r"config data\.domains: unknown domain 'arithmetik'; did you mean "
                                         r"'arithmetic'\?; known domains: .*gsm8k"):
        validate(config_with(domains=("arithmetik",), **OK))
    with pytest.raises(ValueError, match=r"config data\.ood_domains: unknown domain 'mnie'; did you mean 'mine'\?"):
        validate(config_with(domains=("arithmetic",), ood=("mnie",), **dict(OK, role="out_of_domain")))


def test_role_and_name_clash_errors():
    validate(config_with(**OK))
    validate(config_with(domains=("arithmetic",), ood=("mine",), **dict(OK, role="out_of_domain")))
    with pytest.raises(ValueError, match=r"data\.custom\.mine\.role='out_of_domain', but data\.domains lists 'mine'; "
                                         r"list it in data\.ood_domains or set data\.custom\.mine\.role='in_domain'"):
        validate(config_with(**dict(OK, role="out_of_domain")))
    with pytest.raises(ValueError, match=r"data\.custom\.mine\.role='in_domain', but data\.ood_domains lists 'mine'"):
        validate(config_with(domains=("arithmetic",), ood=("mine",), **OK))
    with pytest.raises(ValueError, match=r"data\.custom\.medqa: 'medqa' is a built-in domain"):
        validate(config_with(name="medqa", domains=("arithmetic",), **OK))
    with pytest.raises(ValueError, match=r"a set name must start with a letter"):
        validate(config_with(name="my-set", domains=("arithmetic",), **OK))


# -- the Hugging Face hub, with the client mocked ----------------------------------------------------------------
@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """`snapshot_download` answering from a local folder laid out like a hub dataset; records its calls."""
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    write_shards(snapshot / "all", "test", n_shards=2)
    write_shards(snapshot / "all", "dev", n_shards=1)
    (snapshot / "README.md").write_text("made-up dataset card")
    calls = []

    def snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


HUB = dict(path="hf://made-up-org/made-up-set/all", kind="multiple_choice",
           fields=dict(options="options", answer_type="option_text", id="qid"))


def test_hub_dataset_is_read_like_local_files(tmp_path, fake_hub):
    questions = load(tmp_path, **dict(HUB, hf_split="test", revision="v1"))
    assert [q.id for q in questions] == [f"mine/test{s}-{i}" for s in range(2) for i in range(3)]
    (call,) = {json.dumps(c, sort_keys=True) for c in fake_hub}
    call = json.loads(call)
    assert call["repo_id"] == "made-up-org/made-up-set" and call["repo_type"] == "dataset"
    assert call["revision"] == "v1" and "all/*test*.parquet" in call["allow_patterns"]
    assert len(load(tmp_path, **HUB)) == 9  # every split's files, dev first (sorted by path)


def test_hub_errors_name_the_dataset(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("could not reach huggingface.co")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(MissingSourceError, match=r"data\.custom\.mine\.path: could not download the hub dataset "
                                                 r"'made-up-org/made-up-set' at revision 'v2': OSError: could not"):
        load(tmp_path, **dict(HUB, revision="v2"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the client is not installed
    with pytest.raises(MissingSourceError, match=r"hub dataset 'made-up-org/made-up-set' needs the huggingface_hub"):
        load(tmp_path, **HUB)


def test_hub_folder_without_data_files(tmp_path, fake_hub):
    with pytest.raises(MissingSourceError, match=r"no parquet files whose name has the split 'train' in "
                                                 r"hf://made-up-org/made-up-set/all .*refs/convert/parquet"):
        load(tmp_path, **dict(HUB, hf_split="train", format="parquet"))


# -- the command line -----------------------------------------------------------------------------------------
def test_metacog_sample_and_eval_on_sets_declared_in_a_config_file(tmp_path):
    """`metacog sample` then `metacog eval` (base) from the CLI on one set in each common layout, declared
    only in a config file: the MMLU layout (JSONL), A-D columns with a letter (CSV with quoting and an
    embedded newline), open questions with aliases, numeric answers, and a Parquet folder of shards."""
    from metacog_jax import cli

    files = {
        "mmlu": write_jsonl(tmp_path / "mmlu.jsonl", MMLU_ROWS[:8]),
        "sums": write_jsonl(tmp_path / "arith.jsonl", [
            {"question": f"What is {i} plus {i}?", "answer": 2 * i, "split": "test" if i < 2 else "train"}
            for i in range(6)]),
        "trivia": write_jsonl(tmp_path / "trivia.jsonl", [
            {"question": f"Made-up trivia {i}?", "aliases": [f"answer {i}", f"alias {i}"]} for i in range(4)]),
    }
    (tmp_path / "letters.csv").write_text(CSV_TEXT, encoding="utf-8")
    write_shards(tmp_path / "shards")
    config_file = tmp_path / "my_config.py"
    config_file.write_text(textwrap.dedent(f"""
        import ml_collections
        from configs import common

        def get_config(arg=None):
            c, _ = common.experiment("none", arg, model="tiny", domains=("sums", "mmlu"),
                                     ood=("letters", "trivia", "shards"))
            custom = dict(
                sums=dict(path={str(files["sums"])!r}, kind="numeric", fields=dict(split="split")),
                mmlu=dict(path={str(files["mmlu"])!r}, kind="multiple_choice", test_fraction=0.5,
                          fields=dict(options="choices", answer_type="index", category="subject")),
                letters=dict(path={str(tmp_path / "letters.csv")!r}, kind="multiple_choice", role="out_of_domain",
                             fields=dict(options=("A", "B", "C", "D"), answer_type="letter", id="id", split="split")),
                trivia=dict(path={str(files["trivia"])!r}, kind="open", role="out_of_domain", test_fraction=1.0,
                            fields=dict(answer="aliases", answer_type="aliases")),
                shards=dict(path={str(tmp_path / "shards")!r}, kind="multiple_choice", role="out_of_domain",
                            test_fraction=1.0, fields=dict(options="options", answer_type="option_text", id="qid")),
            )
            for name, settings in custom.items():
                c.data.custom[name] = ml_collections.ConfigDict(settings)
            c.data.n_train, c.data.n_test = 3, 2
            c.sample.k, c.sample.max_new_tokens, c.sample.batch_size = 2, 4, 8
            c.eval.n_pairs, c.eval.n_resamples, c.eval.batch_size = 2, 20, 4
            return c
    """))
    workdir = tmp_path / "run"
    assert cli.main(["sample", f"--config={config_file}", f"--workdir={workdir}"]) == 0
    lines = {name: [json.loads(line) for line in (workdir / "samples" / f"{name}.jsonl").read_text().splitlines()]
             for name in ("sums", "mmlu", "letters", "trivia", "shards")}
    assert len(lines["sums"]) == 5 and {r["domain"] for r in lines["sums"]} == {"sums"}
    assert sorted(r["split"] for r in lines["sums"]) == ["test", "test", "train", "train", "train"]
    assert all(r["id"].startswith("sums/") and len(r["samples"]) == 2 for r in lines["sums"])
    assert [r["id"] for r in lines["letters"]] == ["letters/q3"]  # the one test row of the CSV
    assert all(len(lines[n]) == 2 and {r["split"] for r in lines[n]} == {"test"} for n in ("trivia", "shards"))
    assert {r["split"] for r in lines["mmlu"]} == {"train", "test"}
    assert cli.main(["eval", f"--config={config_file}", f"--workdir={workdir}"]) == 0
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"sums", "mmlu", "letters", "trivia", "shards"}
    assert metrics["datasets"]["trivia"]["role"] == "out_of_domain"
    assert metrics["datasets"]["trivia"]["single"]["graded_by"] == {"rule:containment": 2}
