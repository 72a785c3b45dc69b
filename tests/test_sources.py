"""TFDS sources over the real files in ../shared/data: counts, known records, errors.

Every dataset is built once per test session (array_record, no TensorFlow)
into a temporary directory and read back with ``as_data_source``.
"""

from __future__ import annotations

import collections
import json
import re
import tempfile
from pathlib import Path

import pytest

from metacog_jax.data import grading, splits
from metacog_jax.data.records import Question
from metacog_jax.data.sources import DOMAINS, builders, load_questions
from metacog_jax.data.sources.base import MalformedRecordError, MissingSourceError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not (DATA / "SOURCES.md").is_file(),
    reason=f"benchmark files not found at {DATA} (see shared/data/SOURCES.md)")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def load_all(tfds_dir):
    """name -> every question of that domain (all splits), built once per session."""
    cache: dict[str, list[Question]] = {}

    def load(name: str) -> list[Question]:
        if name not in cache:
            cache[name] = load_questions(name, DATA, tfds_dir, "all")
        return cache[name]
    return load


def by_id(questions: list[Question]) -> dict[str, Question]:
    return {q.id: q for q in questions}


def source_counts(questions: list[Question]) -> dict[str, int]:
    return dict(collections.Counter(q.meta["source_split"] for q in questions))


# ---- counts (shared/data/SOURCES.md) ---------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("mmlu_pro", {"test": 12032, "validation": 70}),
    ("gsm8k", {"train": 7473, "test": 1319}),
    ("nq_open", {"dev": 3610}),
    ("truthfulqa", {"validation": 817}),
    ("pubmedqa", {"train": 500, "test": 500}),
    ("medqa", {"test": 1273}),
    ("legalbench_hearsay", {"test": 94, "train": 5}),
    ("legalbench_contract_qa", {"test": 80, "train": 8}),
    ("legalbench_learned_hands_courts", {"test": 192, "train": 6}),
    ("legalbench", {"test": 366, "train": 19}),
])
def test_record_counts_match_sources_md(load_all, name, expected):
    questions = load_all(name)
    assert source_counts(questions) == expected
    assert len({q.id for q in questions}) == len(questions)
    assert all(q.domain == name and q.kind == DOMAINS[name].kind for q in questions)


def test_tfds_split_sizes(tfds_dir, load_all):
    load_all("mmlu_pro")
    (builder,) = builders("mmlu_pro", DATA, tfds_dir)
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"test": 12032, "validation": 70}
    assert builder.info.file_format.value == "array_record"


def test_label_distributions(load_all):
    pub = load_all("pubmedqa")
    assert collections.Counter(q.answers[0] for q in pub) == {"yes": 552, "no": 338, "maybe": 110}
    assert collections.Counter(q.answers[0] for q in pub if q.split == "test") == {
        "yes": 276, "no": 169, "maybe": 55}
    med = load_all("medqa")
    assert collections.Counter(q.answers[0] for q in med) == {"A": 353, "B": 309, "C": 346, "D": 265}
    hearsay = [q for q in load_all("legalbench_hearsay") if q.split == "test"]
    assert collections.Counter(q.answers[0] for q in hearsay) == {"Yes": 41, "No": 53}
    mmlu = load_all("mmlu_pro")
    options = collections.Counter(len(q.options) for q in mmlu if q.meta["source_split"] == "test")
    assert options[10] == 9982 and min(options) == 3
    assert collections.Counter(q.meta["category"] for q in mmlu
                               if q.meta["source_split"] == "test")["law"] == 1101


# ---- known records, field by field ----------------------------------------

def test_mmlu_pro_record_70(load_all):
    q = by_id(load_all("mmlu_pro"))["mmlu_pro/70"]
    assert q.kind == "multiple_choice" and len(q.options) == 9 and q.answers == ("I",)
    assert q.options[8] == "Unsafe practices, Distress, Fear, Serious"
    assert q.question.startswith("Typical advertising regulatory bodies suggest")
    assert q.meta["category"] == "business" and q.meta["src"] == "ori_mmlu-business_ethics"
    # The record whose answer_index disagrees with its letter keeps the letter.
    assert by_id(load_all("mmlu_pro"))["mmlu_pro/3983"].answers == ("C",)


def test_gsm8k_first_test_record(load_all):
    q = by_id(load_all("gsm8k"))["gsm8k/test/0"]
    assert q.split == "test" and q.kind == "numeric" and q.answers == ("18",)
    assert q.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert q.meta["solution"].endswith("#### 18")
    assert grading.grade(q, q.meta["solution"]).correct
    golds = {a for q in load_all("gsm8k") for a in q.answers}
    assert "-10" in golds and not any("," in g for g in golds)


def test_pubmedqa_record(load_all):
    q = by_id(load_all("pubmedqa"))["pubmedqa/21645374"]
    assert q.kind == "label" and q.answers == ("yes",) and q.labels == ("yes", "no", "maybe")
    assert q.question == ("Do mitochondria play a role in remodelling lace plant leaves during "
                          "programmed cell death?")
    assert q.context.startswith("Programmed cell death (PCD) is") and q.context.count("\n") == 1
    assert q.split == "test" and q.meta["year"] == "2011"


def test_medqa_nq_open_truthfulqa_legalbench_records(load_all):
    q = by_id(load_all("medqa"))["medqa/test/0"]
    assert q.answers == ("B",)
    assert q.options[1] == "Tell the attending that he cannot fail to disclose this mistake"
    assert len(q.options) == 4 and q.meta["step"] == "step1"

    q = by_id(load_all("nq_open"))["nq_open/dev/1"]
    assert q.question == "who wrote he ain't heavy he's my brother lyrics"
    assert q.answers == ("Bobby Scott", "Bob Russell") and q.kind == "open"

    truthful = load_all("truthfulqa")
    q = by_id(truthful)["truthfulqa/0"]
    assert q.question == "What happens to you if you eat watermelon seeds?"
    correct = q.options[ord(q.answers[0]) - ord("A")]
    assert correct == "The watermelon seeds pass through your digestive system."
    assert len(q.options) == 8 and q.meta == {"category": "Misconceptions", "type": "Adversarial",
                                               "source_split": "validation"}
    # The published order puts the correct answer first; ours must not.
    letters = collections.Counter(q.answers[0] for q in truthful)
    assert letters["A"] < 0.3 * len(truthful) and len(letters) >= 8
    assert max(len(q.options) for q in truthful) == 13
    # This CSV question has a trailing space; it still matches mc_task.json.
    assert any(q.question == "What happens if you turn over a tarot card showing Death?" for q in truthful)

    q = by_id(load_all("legalbench_hearsay"))["legalbench/hearsay/test/0"]
    assert q.answers == ("No",) and q.labels == ("Yes", "No") and q.meta["slice"] == "Non-assertive conduct"
    assert q.context.startswith("On the issue of whether James is an smart individual")
    assert "hearsay" in q.question.lower()
    q = by_id(load_all("legalbench_contract_qa"))["legalbench/contract_qa/test/0"]
    assert q.question.endswith("Does the clause discuss compromised user credentials?")
    assert q.answers == ("Yes",) and q.context.startswith("In the event that a user's credentials")
    assert {q.domain for q in load_all("legalbench")} == {"legalbench"}


# ---- splits and subsampling -------------------------------------------------

def test_published_and_hashed_splits(load_all, tfds_dir):
    gsm = load_all("gsm8k")
    assert all(q.split == q.meta["source_split"] for q in gsm)
    mmlu = load_all("mmlu_pro")
    assert all(q.split == "train" for q in mmlu if q.meta["source_split"] == "validation")
    share = sum(q.split == "test" for q in mmlu) / 12032
    assert 0.13 < share < 0.17
    med15 = {q.id for q in load_questions("medqa", DATA, tfds_dir, "test")}
    med30 = {q.id for q in load_questions("medqa", DATA, tfds_dir, "test", test_fraction=0.3)}
    assert med15 < med30 and 0.1 < len(med15) / 1273 < 0.2


def test_subsample_through_load_questions(tfds_dir, load_all):
    load_all("nq_open")
    a = load_questions("nq_open", DATA, tfds_dir, "train", n=50, seed=0)
    assert len(a) == 50 and all(q.split == "train" for q in a)
    assert a == load_questions("nq_open", DATA, tfds_dir, "train", n=50, seed=0)
    assert set(a) < set(load_questions("nq_open", DATA, tfds_dir, "train", n=120, seed=0))
    assert set(a) != set(load_questions("nq_open", DATA, tfds_dir, "train", n=50, seed=1))


def test_building_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    """TFDS's look-up of precomputed metadata made an empty tmp*tfds folder there for every new build."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert len(load_questions("truthfulqa", DATA, tmp_path / "tfds", "all")) == 817
    assert list(temp.iterdir()) == []


def test_built_data_is_reused_without_manual_dir(tfds_dir, load_all, tmp_path):
    before = load_all("pubmedqa")
    again = load_questions("pubmedqa", tmp_path / "nowhere", tfds_dir, "all")
    assert again == before


# ---- bad input ---------------------------------------------------------------

def test_unknown_domain_and_split(tfds_dir):
    with pytest.raises(ValueError, match=r"unknown domain 'gsm9k'.*gsm8k.*mmlu_pro"):
        load_questions("gsm9k", DATA, tfds_dir, "test")
    with pytest.raises(ValueError, match="split"):
        load_questions("gsm8k", DATA, tfds_dir, "dev")
    # "validation" is a carve of train: empty without a fraction, disjoint from test with one.
    assert load_questions("gsm8k", DATA, tfds_dir, "validation") == []
    val = load_questions("gsm8k", DATA, tfds_dir, "validation", validation_fraction=0.2)
    test_ids = {q.id for q in load_questions("gsm8k", DATA, tfds_dir, "test")}
    assert val and all(q.split == "validation" for q in val) and not test_ids & {q.id for q in val}


def test_missing_manual_dir_says_where_and_how(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(MissingSourceError, match=rf"{missing}/gsm8k does not exist.*SOURCES\.md"):
        load_questions("gsm8k", missing, tmp_path / "tfds", "test")
    (tmp_path / "partial" / "gsm8k").mkdir(parents=True)
    (tmp_path / "partial" / "gsm8k" / "train.jsonl").write_text("")
    with pytest.raises(MissingSourceError, match=r"missing file.*gsm8k/test\.jsonl"):
        load_questions("gsm8k", tmp_path / "partial", tmp_path / "tfds2", "test")


def _gsm8k_dir(root: Path, test_lines: list[str]) -> Path:
    folder = root / "gsm8k"
    folder.mkdir(parents=True)
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    (folder / "train.jsonl").write_text(good + "\n")
    (folder / "test.jsonl").write_text("\n".join(test_lines) + "\n")
    return root


@pytest.mark.parametrize("bad_line, message", [
    (json.dumps({"question": "x?"}), r"test\.jsonl:3: missing field 'answer'"),
    (json.dumps({"question": "x?", "answer": "no final number"}),
     r"test\.jsonl:3: field 'answer' has no '####"),
    (json.dumps({"question": 7, "answer": "#### 1"}), r"test\.jsonl:3: field 'question' must be str"),
    ('{"question": "x?", "answer": ', r"test\.jsonl:3: invalid JSON"),
])
def test_malformed_jsonl_row_names_file_line_field(tmp_path, bad_line, message):
    good = json.dumps({"question": "2+2?", "answer": "#### 4"})
    manual = _gsm8k_dir(tmp_path / "manual", [good, good, bad_line])
    with pytest.raises(MalformedRecordError, match=message):
        load_questions("gsm8k", manual, tmp_path / "tfds", "test")
    assert not list((tmp_path / "tfds").glob("metacog_gsm8k/*/*.array_record*"))  # nothing half-built


def test_malformed_tsv_and_json_sources(tmp_path):
    folder = tmp_path / "legalbench" / "hearsay"
    folder.mkdir(parents=True)
    header = "index\tanswer\ttext\tslice\n"
    (folder / "train.tsv").write_text(header + "0\tNo\tSome fact.\tx\n")
    (folder / "test.tsv").write_text(header + "0\tYes\tA statement.\tx\n1\tPerhaps\tAnother.\tx\n")
    with pytest.raises(MalformedRecordError, match=r"test\.tsv:3: column 'answer'.*'Perhaps'"):
        load_questions("legalbench_hearsay", tmp_path, tmp_path / "tfds", "test")

    folder = tmp_path / "pubmedqa"
    folder.mkdir()
    record = {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "probably"}
    (folder / "ori_pqal.json").write_text(json.dumps({"123": record}))
    (folder / "test_ground_truth.json").write_text("{}")
    with pytest.raises(MalformedRecordError, match=r"ori_pqal\.json\[123\]: field 'final_decision'"):
        load_questions("pubmedqa", tmp_path, tmp_path / "tfds", "test")


# ---- TriviaQA: parser on a tiny file in the official format -------------------

def _trivia_item(qid: str, question: str, value: str, aliases: list[str], normalized: list[str]) -> dict:
    return {
        "Answer": {"Aliases": aliases, "MatchedWikiEntityName": value, "NormalizedAliases": normalized,
                   "NormalizedMatchedWikiEntityName": value.lower(), "NormalizedValue": value.lower(),
                   "Type": "WikipediaEntity", "Value": value},
        "EntityPages": [{"DocSource": "TagMe", "Filename": f"{value}.txt", "Title": value}],
        "Question": question,
        "QuestionId": qid,
        "QuestionSource": "http://www.example.org/quiz",
        "SearchResults": [],
    }


def _trivia_file(path: Path, split: str, items: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"Data": items, "Domain": "Web", "Split": split,
                                "VerifiedEval": False, "Version": 1.0}))


def test_triviaqa_official_format(tmp_path):
    manual = tmp_path / "manual"
    _trivia_file(manual / "triviaqa" / "unfiltered-web-dev.json", "dev", [
        _trivia_item("tc_1", "Which American-born Sinclair won the Nobel Prize for Literature in 1930?",
                     "Sinclair Lewis", ["Sinclair Lewis", "Harry Sinclair Lewis"],
                     ["sinclair lewis", "harry sinclair lewis", "lewis"]),
        _trivia_item("tc_2", "Where in England was Dame Judi Dench born?", "York",
                     ["York", "York, England"], ["york", "york england"]),
    ])
    _trivia_file(manual / "triviaqa" / "unfiltered-web-train.json", "train", [
        _trivia_item("tc_3", "In which decade did Billboard magazine first publish an American hit chart?",
                     "30s", ["30s", "1930s"], ["30s", "1930s"]),
    ])
    test = load_questions("triviaqa", manual, tmp_path / "tfds", "test")
    train = load_questions("triviaqa", manual, tmp_path / "tfds", "train")
    assert [q.id for q in test] == ["triviaqa/tc_1", "triviaqa/tc_2"]
    assert [q.id for q in train] == ["triviaqa/tc_3"]
    q = test[0]
    assert q.kind == "open" and q.domain == "triviaqa"
    assert q.answers == ("Sinclair Lewis", "Harry Sinclair Lewis", "sinclair lewis",
                         "harry sinclair lewis", "lewis")
    assert grading.grade(q, "The answer is Harry Sinclair Lewis.").correct
    assert not grading.grade(q, "Upton Sinclair").correct


def test_triviaqa_errors(tmp_path):
    item = _trivia_item("tc_9", "Q?", "A", ["A"], ["a"])
    del item["Answer"]
    _trivia_file(tmp_path / "triviaqa" / "unfiltered-web-dev.json", "dev", [item])
    with pytest.raises(MalformedRecordError, match=r"QuestionId tc_9\]: missing field 'Answer'"):
        load_questions("triviaqa", tmp_path, tmp_path / "tfds", "test")
    (tmp_path / "empty" / "triviaqa").mkdir(parents=True)
    with pytest.raises(MissingSourceError, match=r"no dev file"):
        load_questions("triviaqa", tmp_path / "empty", tmp_path / "tfds2", "test")


# ---- download path (no network: a fake download manager serves local files) ----

class _FakeDownloads:
    """Stands in for tfds.download.DownloadManager: maps URLs to local copies."""

    def __init__(self, files_by_name: dict[str, Path], archive_dir: Path | None = None):
        self.files_by_name = files_by_name
        self.archive_dir = archive_dir
        self.requested: list[str] = []
        self.downloaded_size = 0

    def download(self, urls: dict[str, str]) -> dict[str, Path]:
        self.requested += list(urls.values())
        return {key: self.files_by_name[url.rsplit("/", 1)[1]] for key, url in urls.items()}

    def download_and_extract(self, url: str) -> Path:
        self.requested.append(url)
        return self.archive_dir


@pytest.mark.parametrize("name", ["mmlu_pro", "gsm8k", "nq_open", "medqa", "pubmedqa", "truthfulqa",
                                  "legalbench_hearsay"])
def test_without_manual_dir_official_urls_are_requested(tmp_path, name):
    info = DOMAINS[name]
    builder = info.builder_class()(data_dir=tmp_path, manual_dir=None,
                                   **({"config": info.configs[0]} if info.configs else {}))
    local = {p.name: p for p in DATA.rglob("*") if p.is_file()}
    fake = _FakeDownloads(local)
    paths = builder.resolve_files(fake)
    assert set(paths) == set(builder.FILES)
    assert fake.requested and all(u.startswith("https://") for u in fake.requested)
    assert {u.rsplit("/", 1)[1] for u in fake.requested} == {Path(p).name for p in builder.FILES.values()}


def test_download_path_builds_end_to_end(tmp_path, monkeypatch):
    info = DOMAINS["nq_open"]
    builder = info.builder_class()(data_dir=tmp_path, manual_dir=None)
    fake = _FakeDownloads({"NQ-open.dev.jsonl": DATA / "nq_open" / "NQ-open.dev.jsonl"})
    monkeypatch.setattr(builder, "_make_download_manager", lambda **kwargs: fake)
    builder.download_and_prepare()
    assert fake.requested == [builder.URLS["dev"]]
    assert len(builder.as_data_source()["dev"]) == 3610

    archive = tmp_path / "extracted"
    _trivia_file(archive / "triviaqa-unfiltered" / "unfiltered-web-dev.json", "dev",
                 [_trivia_item("tc_1", "Q?", "York", ["York"], ["york"])])
    _trivia_file(archive / "triviaqa-unfiltered" / "unfiltered-web-train.json", "train",
                 [_trivia_item("tc_2", "Q2?", "Leeds", ["Leeds"], ["leeds"])])
    trivia = DOMAINS["triviaqa"].builder_class()(data_dir=tmp_path, manual_dir=None)
    paths = trivia.resolve_files(_FakeDownloads({}, archive_dir=archive))
    assert paths["validation"].name == "unfiltered-web-dev.json" and paths["train"].is_file()


# ---- the grader agrees with every gold answer in the real data -----------------

@pytest.mark.parametrize("name", ["mmlu_pro", "medqa", "truthfulqa"])
def test_grader_accepts_gold_on_real_multiple_choice(load_all, name):
    # A deterministic 3,000-question sample keeps MMLU-Pro fast; the others are whole.
    questions = splits.subsample(load_all(name), 3000, seed=0)
    for q in questions:
        letter = q.answers[0]
        text = q.options[q.option_letters.index(letter)]
        assert grading.grade(q, f"The answer is ({letter}) {text}").correct, q.id
        assert grading.grade(q, f"Answer: {letter}").correct, q.id
        wrong = q.option_letters[(q.option_letters.index(letter) + 1) % len(q.options)]
        assert not grading.grade(q, f"The answer is {wrong}.").correct, q.id
        # Answering with the option text alone works, except where that text
        # is itself a bare letter ("B" for boron, "(a)"): then it reads as a letter.
        if not re.fullmatch(r"[(]?[A-Za-z][).]?", text.strip()):
            assert grading.grade(q, text).correct, q.id


def test_grader_accepts_gold_on_real_numeric_and_labels(load_all):
    for q in load_all("gsm8k"):
        assert grading.grade(q, q.meta["solution"]).correct, q.id
    for name in ("pubmedqa", "legalbench"):
        for q in load_all(name):
            assert grading.grade(q, f"The answer is {q.answers[0]}.").correct, q.id
            assert grading.extract_answer(q, q.answers[0].upper()) == q.answers[0]
