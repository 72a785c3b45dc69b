"""Tests of the paper-2 rating study app (metacog_jax/perception/study.py) through Flask's test client.

Covers: items-file validation, per-participant schedules, balanced condition assignment, resume,
server-side rejection of bad ratings, duplicate and stale submissions, escaping of model text,
the CSV export, and concurrent participants from several threads.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

flask = pytest.importorskip("flask", reason="the study app needs flask (pip install 'flask>=3')")

from metacog_jax.perception import study  # noqa: E402

CERTAINTY_FOR_STYLE = {"not_sure": 0.3, "somewhat_sure": 0.6, "sure": 0.9}


def item_record(i: int, **overrides) -> dict:
    """A valid item; even i are multiple choice, odd i open-ended."""
    certainty = ("not_sure", "somewhat_sure", "sure")[i % 3]
    record = {
        "item_id": f"q{i:03d}",
        "question": f"Question number {i}?",
        "options": [f"option {i}-{k}" for k in range(4)] if i % 2 == 0 else [],
        "model_answer": "B" if i % 2 == 0 else f"answer {i}",
        "correct": i % 3 != 0,
        "model_confidence": CERTAINTY_FOR_STYLE[certainty],
        "explanations": {
            "default": f"Default explanation {i}.",
            f"{certainty}_long": f"I am {certainty} (long) about {i}.",
            "sure_short": f"I am sure: {i}.",
        },
        "selected_style": f"{certainty}_long",
    }
    record.update(overrides)
    return record


def write_items(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def items_path(tmp_path: Path) -> Path:
    return write_items(tmp_path / "items.jsonl", [item_record(i) for i in range(5)])


def make_app(items_path: Path, db_path: Path, **kwargs):
    app = study.create_app(items_path, db_path, secret_key="test-secret", **kwargs)
    app.config["TESTING"] = True
    return app


def csrf(client, path: str = "/?PROLIFIC_PID=someone&STUDY_ID=st&SESSION_ID=se") -> str:
    """The session's CSRF token as the page at `path` (by default a start page) carries it in its form."""
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def link(code: str, session: str | None = None) -> dict[str, str]:
    """The start form's fields for participant `code` arriving by a Prolific-style link."""
    return {"participant": code, "study": "study-1", "session": session or f"{code}-session"}


def sign_in(client, code: str, session: str | None = None):
    """Arrives by the participant's link (GET /?PROLIFIC_PID=...) and presses Start."""
    f = link(code, session)
    page = client.get(f"/?PROLIFIC_PID={f['participant']}&STUDY_ID={f['study']}&SESSION_ID={f['session']}")
    html = page.get_data(as_text=True)
    for name, value in f.items():  # the start form carries the platform's ids
        assert f'name="{name}" value="{value}"' in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    return client.post("/start", data={**f, "csrf_token": token}, follow_redirects=True)


def current_item(client) -> tuple[str, int | None, str]:
    """(item_id, attention-check percent or None, page html) of the participant's current item."""
    response = client.get("/item")
    assert response.status_code == 200, response.status_code
    html = response.get_data(as_text=True)
    item_id = re.search(r'name="item_id" value="([^"]+)"', html).group(1)
    target = re.search(r"please enter (\d+) as your answer", html)
    return item_id, (int(target.group(1)) if target else None), html


def submit(client, item_id: str, rating: str, own_answer: str = ""):
    with client.session_transaction() as session:
        token = session.get("csrf", "")
    return client.post("/item", data={"item_id": item_id, "rating": rating, "own_answer": own_answer,
                                      "csrf_token": token})


def db_rows(db_path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM responses ORDER BY participant_id, position").fetchall()
    finally:
        conn.close()


def participant_conditions(db_path: Path) -> dict[str, str]:
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT participant_id, condition FROM participants").fetchall())
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Items file


@pytest.mark.parametrize(
    "bad, field",
    [
        (item_record(1, model_confidence=1.5), "model_confidence"),
        (item_record(1, model_confidence="0.5"), "model_confidence"),
        (item_record(1, correct=1), "correct"),
        (item_record(1, options="A,B"), "options"),
        (item_record(1, selected_style="sure_long"), "selected_style"),
        (item_record(1, explanations={"very_sure_long": "x"}), "explanations"),
        (item_record(1, item_id="__attention_1"), "item_id"),
        ({k: v for k, v in item_record(1).items() if k != "question"}, "question"),
        (item_record(0), "item_id"),  # duplicate of line 1
    ],
)
def test_load_items_errors_name_file_line_and_field(tmp_path: Path, bad: dict, field: str):
    path = write_items(tmp_path / "items.jsonl", [item_record(0), bad])
    with pytest.raises(study.ItemsFileError, match=rf"items\.jsonl:2: field '{field}"):
        study.load_items(path)


def test_load_items_reports_invalid_json_line(tmp_path: Path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item_record(0)) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(study.ItemsFileError, match=r"items\.jsonl:3: invalid JSON"):
        study.load_items(path)


def test_load_items_roundtrip(items_path: Path):
    items = study.load_items(items_path)
    assert [it.item_id for it in items] == [f"q{i:03d}" for i in range(5)]
    assert items[0].options == tuple(f"option 0-{k}" for k in range(4)) and items[1].options == ()
    assert items[2].line == 3 and items[0].to_record() == item_record(0)


def test_fixed_condition_needs_its_style_on_every_item(tmp_path: Path, items_path: Path):
    with pytest.raises(study.ItemsFileError, match=r"items\.jsonl:\d+: field 'explanations' lacks style 'not_sure_short'"):
        study.create_app(items_path, tmp_path / "s.db", conditions=("not_sure_short",))
    with pytest.raises(ValueError, match="unknown condition"):
        study.create_app(items_path, tmp_path / "s.db", conditions=("bogus",))


def test_database_for_another_configuration_is_refused(tmp_path: Path, items_path: Path):
    db = tmp_path / "s.db"
    make_app(items_path, db, seed=0)
    make_app(items_path, db, seed=0)  # same configuration: reopening is fine
    with pytest.raises(ValueError, match=r"different study configuration \(differs in: seed\)"):
        make_app(items_path, db, seed=1)


# ---------------------------------------------------------------------------------------------
# Schedules and assignment


def test_schedule_is_deterministic_complete_and_code_dependent():
    ids = [f"q{i}" for i in range(12)]
    a = study.participant_schedule(ids, "alice", attention_checks=3, seed=0)
    assert a == study.participant_schedule(ids, "alice", attention_checks=3, seed=0)
    assert len(a) == 15 and len({s.item_id for s in a}) == 15
    assert sorted(s.item_id for s in a if not s.is_attention_check) == sorted(ids)
    checks = [s for s in a if s.is_attention_check]
    assert len(checks) == 3 and all(0 < s.attention_target < 1 for s in checks)
    others = [study.participant_schedule(ids, f"p{k}", attention_checks=3, seed=0) for k in range(5)]
    assert any([s.item_id for s in o] != [s.item_id for s in a] for o in others)
    subset = study.participant_schedule(ids, "alice", n_items=4, attention_checks=1, seed=0)
    assert len(subset) == 5 and sum(s.is_attention_check for s in subset) == 1


@pytest.mark.parametrize("conditions", [("default", "selected"), ("default", "selected", "sure_short")])
def test_assignment_is_balanced(tmp_path: Path, items_path: Path, conditions):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, conditions=conditions)
    n = 3 * len(conditions) + 1
    for k in range(n):
        sign_in(app.test_client(), f"p{k}")
    assigned = participant_conditions(db)
    counts = [list(assigned.values()).count(c) for c in conditions]
    assert sum(counts) == n and max(counts) - min(counts) <= 1
    # Ties go to the earliest condition: participants 0, 1, ... fill conditions in order.
    assert [assigned[f"p{k}"] for k in range(len(conditions))] == list(conditions)
    # Signing in again does not re-assign or add a participant.
    sign_in(app.test_client(), "p0")
    assert participant_conditions(db) == assigned


def test_condition_decides_the_explanation_shown_and_stored(tmp_path: Path, items_path: Path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, conditions=("default", "selected"), attention_checks=0)
    items = {it.item_id: it for it in study.load_items(items_path)}
    for code in ("default-person", "selected-person"):
        client = app.test_client()
        sign_in(client, code)
        for _ in range(len(items)):
            item_id, _, html = current_item(client)
            style = "default" if code.startswith("default") else items[item_id].selected_style
            assert items[item_id].explanations[style] in html
            assert submit(client, item_id, "50").status_code == 303
    for row in db_rows(db):
        expected = "default" if row["participant_id"].startswith("default") else items[row["item_id"]].selected_style
        assert row["style"] == expected


# ---------------------------------------------------------------------------------------------
# One participant


def test_resume_continues_without_repeating_items(tmp_path: Path, items_path: Path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, attention_checks=2)
    first = app.test_client()
    sign_in(first, "resumer")
    seen = []
    for rating in ("10", "20"):
        item_id, target, _ = current_item(first)
        submit(first, item_id, str(target) if target is not None else rating)
        seen.append(item_id)
    # A new browser (no cookie) with the same code picks up at the third item.
    second = app.test_client()
    page = sign_in(second, "resumer").get_data(as_text=True)
    assert "Item 3 of 7" in page
    while True:
        response = second.get("/item")
        if response.status_code == 303:
            assert response.headers["Location"].endswith("/done")
            break
        item_id, target, _ = current_item(second)
        assert item_id not in seen
        submit(second, item_id, str(target) if target is not None else "70")
        seen.append(item_id)
    assert len(seen) == 7 and len(set(seen)) == 7
    assert "Thank you" in second.get("/done").get_data(as_text=True)
    assert [r["item_id"] for r in db_rows(db)] == seen
    assert len(participant_conditions(db)) == 1


@pytest.mark.parametrize(
    "rating, message",
    [("", "Please enter a probability"), ("abc", "is not a number"), ("150", "out of range"),
     ("100.01", "out of range"), ("-1", "is not a number"), ("nan", "is not a number"), ("inf", "is not a number"),
     # float() reads all of these; a rating is ASCII digits with an optional decimal point, nothing else
     ("1_0", "is not a number"), ("1e2", "is not a number"), ("\u0661\u0660", "is not a number"),
     ("0x10", "is not a number"), ("5 0", "is not a number"), ("+50", "is not a number")],
)
def test_invalid_rating_reshows_item_with_error_and_stores_nothing(tmp_path, items_path, rating, message):
    db = tmp_path / "s.db"
    client = make_app(items_path, db).test_client()
    sign_in(client, "validator")
    item_id, _, _ = current_item(client)
    response = submit(client, item_id, rating)
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert message in html and 'class="error"' in html
    assert f'name="item_id" value="{item_id}"' in html
    assert db_rows(db) == []
    assert current_item(client)[0] == item_id


def test_rating_scale_is_percent_stored_as_probability(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db, attention_checks=0).test_client()
    sign_in(client, "scaler")
    for raw, expected in (("0", 0.0), ("37.5", 0.375), ("100 %", 1.0)):
        item_id, _, _ = current_item(client)
        assert submit(client, item_id, raw).status_code == 303
        assert db_rows(db)[-1]["rating"] == pytest.approx(expected)


def test_own_answer_must_be_an_option_letter_for_multiple_choice(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db, attention_checks=0).test_client()
    sign_in(client, "chooser")
    items = {it.item_id: it for it in study.load_items(items_path)}
    while True:
        item_id, _, _ = current_item(client)
        if items[item_id].options:
            break
        submit(client, item_id, "50", "free text is fine here")
    response = submit(client, item_id, "50", "Z")
    assert response.status_code == 400 and "option letters" in response.get_data(as_text=True)
    assert item_id not in [r["item_id"] for r in db_rows(db)]
    assert submit(client, item_id, "50", "C").status_code == 303
    assert db_rows(db)[-1]["own_answer"] == "C"


def test_duplicate_and_stale_submissions_are_not_stored(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, attention_checks=0)
    client = app.test_client()
    sign_in(client, "double")
    schedule = study.participant_schedule([f"q{i:03d}" for i in range(5)], "double", attention_checks=0)
    first, second, third = (s.item_id for s in schedule[:3])
    assert current_item(client)[0] == first
    assert submit(client, first, "40").status_code == 303
    # Same form sent again (double click / back button): rejected with 409 and the current item, with a
    # notice saying so; nothing new stored.
    again = submit(client, first, "90")
    html = again.get_data(as_text=True)
    assert again.status_code == 409 and "was not recorded" in html and f'name="item_id" value="{second}"' in html
    # An item further down the sequence (forged or from another tab) is rejected too.
    assert submit(client, third, "90").status_code == 409
    rows = db_rows(db)
    assert [(r["item_id"], r["rating"]) for r in rows] == [(first, 0.40)]
    assert current_item(client)[0] == second


def test_unknown_session_and_bad_code_go_back_to_start(tmp_path, items_path):
    client = make_app(items_path, tmp_path / "s.db").test_client()
    assert client.get("/item").headers["Location"].endswith("/")
    token = csrf(client)
    assert client.post("/item", data={"item_id": "q000", "rating": "50", "csrf_token": token}).status_code == 303
    response = client.post("/start", data={**link("bad id!"), "csrf_token": token})
    assert response.status_code == 400 and "recruiting platform" in response.get_data(as_text=True)
    assert db_rows(tmp_path / "s.db") == [] and participant_conditions(tmp_path / "s.db") == {}


def test_model_text_is_escaped(tmp_path: Path):
    script = "<script>alert(1)</script>"
    record = item_record(
        0,
        question=f"Q {script}",
        options=[f"opt {script}", "plain"],
        model_answer=f"ans {script}",
        explanations={"default": f"Because {script}", "sure_long": f"Sure {script}"},
        selected_style="sure_long",
    )
    items = write_items(tmp_path / "items.jsonl", [record])
    client = make_app(items, tmp_path / "s.db", attention_checks=0).test_client()
    html = sign_in(client, "xss").get_data(as_text=True)
    assert script not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # question, option, answer, explanation


def test_attention_checks_are_recorded_with_pass_or_fail(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db, attention_checks=2).test_client()
    sign_in(client, "attender")
    checks_seen = 0
    for _ in range(7):
        item_id, target, _ = current_item(client)
        if target is None:
            rating = "50"
        else:
            # Pass the first check, fail the second.
            rating = str(target) if checks_seen == 0 else str((target + 30) % 100)
            checks_seen += 1
        submit(client, item_id, rating)
    rows = db_rows(db)
    checks = [r for r in rows if r["is_attention_check"]]
    assert [r["attention_passed"] for r in checks] == [1, 0]
    assert all(r["style"] == study.ATTENTION_STYLE for r in checks)
    assert all(r["attention_passed"] is None for r in rows if not r["is_attention_check"])


# ---------------------------------------------------------------------------------------------
# Export


def test_export_csv_holds_exactly_the_accepted_answers(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, attention_checks=1, n_items_per_participant=3)
    expected = []
    for code in ("alpha", "beta"):
        client = app.test_client()
        sign_in(client, code)
        for step in range(4):
            item_id, target, _ = current_item(client)
            submit(client, item_id, "500")  # rejected: out of range
            submit(client, item_id, "")  # rejected: missing
            rating = target if target is not None else 10 * (step + 1)
            own = "A" if 'id="options"' in current_item(client)[2] and target is None else ""
            assert submit(client, item_id, str(rating), own).status_code == 303
            submit(client, item_id, "99")  # rejected: duplicate
            expected.append((code, item_id, rating / 100, own, int(target is not None)))
    out = tmp_path / "export" / "ratings.csv"
    assert study.export_csv(db, out) == 8
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == study.EXPORT_COLUMNS
        rows = list(reader)
    conditions = participant_conditions(db)
    got = [(r["participant_id"], r["item_id"], float(r["rating"]), r["own_answer"], int(r["is_attention_check"]))
           for r in rows]
    assert got == expected
    for r in rows:
        assert r["condition"] == conditions[r["participant_id"]]
        assert r["attention_passed"] == ("1" if r["is_attention_check"] == "1" else "")
        assert r["created_at"].endswith("+00:00")
    assert sorted(conditions.values()) == ["default", "selected"]
    assert not list(out.parent.glob("*.tmp"))


def test_export_of_missing_database_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.db"):
        study.export_csv(tmp_path / "nope.db", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# ---------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_participants_neither_lose_nor_mix_responses(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, conditions=("default", "selected", "sure_short"), attention_checks=1)
    n_participants, n_slots = 6, 6
    errors: list[BaseException] = []
    start = threading.Barrier(n_participants, timeout=30)

    def participant(k: int) -> None:
        try:
            client = app.test_client()
            start.wait()
            sign_in(client, f"conc{k}")
            for step in range(n_slots):  # bounded: one submission per slot
                item_id, target, _ = current_item(client)
                # The rating encodes who sent it and when, so a mixed-up row would show.
                rating = target if target is not None else 10 * k + step
                response = submit(client, item_id, str(rating))
                assert response.status_code == 303, response.get_data(as_text=True)
            assert client.get("/item").headers["Location"].endswith("/done")
        except BaseException as e:  # noqa: BLE001 - surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=participant, args=(k,)) for k in range(n_participants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a participant thread hung"
    assert not errors, errors
    rows = db_rows(db)
    assert len(rows) == n_participants * n_slots
    for k in range(n_participants):
        mine = [r for r in rows if r["participant_id"] == f"conc{k}"]
        assert [r["position"] for r in mine] == list(range(n_slots))
        for r in mine:
            if not r["is_attention_check"]:
                assert r["rating"] == pytest.approx((10 * k + r["position"]) / 100)
            else:
                assert r["attention_passed"] == 1
    counts = sorted(list(participant_conditions(db).values()).count(c) for c in ("default", "selected", "sure_short"))
    assert counts == [2, 2, 2]


def test_concurrent_double_submit_stores_one_row(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, attention_checks=0)
    sign_in(app.test_client(), "racer")
    item_id = study.participant_schedule([f"q{i:03d}" for i in range(5)], "racer", attention_checks=0)[0].item_id
    n = 8
    start = threading.Barrier(n, timeout=30)
    statuses: list[int] = []

    def send(k: int) -> None:
        client = app.test_client()
        with client.session_transaction() as session:
            session["participant_id"], session["csrf"] = "racer", "token"
        start.wait()
        statuses.append(submit(client, item_id, str(k)).status_code)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(statuses) == [303] + [409] * (n - 1)  # one accepted, the others told it was not recorded
    rows = db_rows(db)
    assert [r["item_id"] for r in rows] == [item_id]


def test_database_refuses_a_second_answer_to_the_same_item(tmp_path, items_path):
    # The backstop under the app's own check: even a direct insert cannot duplicate an answer.
    db = tmp_path / "s.db"
    client = make_app(items_path, db, attention_checks=0).test_client()
    sign_in(client, "unique")
    item_id, _, _ = current_item(client)
    submit(client, item_id, "30")
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(
                "INSERT INTO responses (participant_id, position, item_id, style, rating, own_answer, "
                "is_attention_check, attention_passed, created_at) VALUES ('unique', 9, ?, 'default', 0.5, '', 0, "
                "NULL, 'now')",
                (item_id,),
            )
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Hardening: what a participant or an attacker can send


def open_items(tmp_path: Path) -> Path:
    return write_items(tmp_path / "open.jsonl", [item_record(i) for i in (1, 3, 5, 7, 9, 11)])


def test_export_neutralises_formulas_and_gap_reads_them_back(tmp_path):
    from metacog_jax.perception import gap

    answers = ['=HYPERLINK("http://x","y")', "+1+1", "@SUM(A1)", "-3", "'tis", "'=x"]
    db = tmp_path / "s.db"
    client = make_app(open_items(tmp_path), db, attention_checks=0).test_client()
    sign_in(client, "formulas")
    for answer in answers:
        assert submit(client, current_item(client)[0], "50", answer).status_code == 303
    out = tmp_path / "ratings.csv"
    study.export_csv(db, out)
    with out.open(newline="") as f:
        cells = [r["own_answer"] for r in csv.DictReader(f)]
    # Each cell a spreadsheet would evaluate (or whose quote it would swallow) starts with the ' escape.
    assert cells == ["'" + a if a[0] in "=+-@'" else a for a in answers]
    assert not any(c[0] in "=+-@" for c in cells)
    assert [r["own_answer"] for r in gap.read_ratings_csv(out)] == answers  # read back exactly


@pytest.mark.parametrize("answer", ["a\x00b", "line\r\nbreak", "tab\there", "bell\x07"])
def test_control_characters_in_own_answers_are_refused(tmp_path, answer):
    db = tmp_path / "s.db"
    client = make_app(open_items(tmp_path), db, attention_checks=0).test_client()
    sign_in(client, "controls")
    response = submit(client, current_item(client)[0], "50", answer)
    assert response.status_code == 400 and "control character" in response.get_data(as_text=True)
    assert db_rows(db) == []


def test_oversized_input_is_refused_and_never_echoed(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db).test_client()
    sign_in(client, "big")
    item_id = current_item(client)[0]
    response = submit(client, item_id, "9" * 10_000_000)
    assert response.status_code == 413 and len(response.get_data()) < 4096
    # Under the size limit but no rating: refused without putting the text back into the page.
    long = "7" * 5000
    response = submit(client, item_id, long)
    assert response.status_code == 400 and long not in response.get_data(as_text=True)
    assert len(response.get_data()) < 8192 and db_rows(db) == []


@pytest.mark.parametrize("directory", ["x%41", "hash#dir", "what?dir"])
def test_export_opens_the_database_at_its_real_path(tmp_path, items_path, directory):
    # "x%41" used to be read as the URI for "xA": here another study sits at that decoded path.
    for name, code in ((directory, "mine"), ("xA", "theirs")):
        db = tmp_path / name / "s.db"
        client = make_app(items_path, db).test_client()
        sign_in(client, code)
        item_id, target, _ = current_item(client)
        submit(client, item_id, str(target) if target is not None else "50")
    rows = list(study.iter_responses(tmp_path / directory / "s.db"))
    assert [r["participant_id"] for r in rows] == ["mine"]


def test_posts_need_the_session_csrf_token_and_the_same_origin(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db).test_client()
    token = csrf(client)
    assert client.post("/start", data=link("p1")).status_code == 400
    assert client.post("/start", data={**link("p1"), "csrf_token": token + "x"}).status_code == 400
    other = make_app(items_path, tmp_path / "other.db").test_client()  # a token from another session
    assert other.post("/start", data={**link("p1"), "csrf_token": token}).status_code == 400
    forged = client.post("/start", data={**link("p1"), "csrf_token": token}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    assert participant_conditions(db) == {}
    assert client.post("/start", data={**link("p1"), "csrf_token": token},
                       headers={"Origin": "http://localhost"}).status_code == 303
    item_id = current_item(client)[0]
    assert client.post("/item", data={"item_id": item_id, "rating": "50"}).status_code == 400
    assert db_rows(db) == []


def test_every_page_sends_the_security_headers(tmp_path, items_path):
    client = make_app(items_path, tmp_path / "s.db").test_client()
    responses = [client.get("/"), client.post("/start", data={}), client.get("/?PROLIFIC_PID=a&STUDY_ID=b&SESSION_ID=c")]
    sign_in(client, "headers")
    responses += [client.get("/item"), submit(client, current_item(client)[0], "x")]
    for response in responses:
        for name, value in study.SECURITY_HEADERS.items():
            assert response.headers[name] == value, (response.status_code, name)
    assert "frame-ancestors 'none'" in study.SECURITY_HEADERS["Content-Security-Policy"]


def test_an_answer_after_the_last_item_gets_409(tmp_path, items_path):
    db = tmp_path / "s.db"
    client = make_app(items_path, db, attention_checks=0, n_items_per_participant=1).test_client()
    sign_in(client, "finisher")
    item_id = current_item(client)[0]
    assert submit(client, item_id, "60").headers["Location"].endswith("/done")
    late = submit(client, item_id, "10")
    assert late.status_code == 409 and "not recorded" in late.get_data(as_text=True)
    assert [r["rating"] for r in db_rows(db)] == [0.6]


def test_the_signing_key_survives_a_restart(tmp_path, items_path):
    db = tmp_path / "s.db"
    first = study.create_app(items_path, db).test_client()
    sign_in(first, "restart")
    item_id = current_item(first)[0]
    key_file = tmp_path / "s.db.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    restarted = study.create_app(items_path, db).test_client()  # a new server process, same database
    restarted.set_cookie("session", first.get_cookie("session").value)
    assert current_item(restarted)[0] == item_id  # still signed in, at the same item
    key_file.write_bytes(b"short")
    with pytest.raises(ValueError, match="s.db.key holds 5 bytes"):
        study.create_app(items_path, db)


def test_every_study_parameter_is_a_command_line_flag(tmp_path, items_path, monkeypatch):
    from metacog_jax import cli

    seen = {}
    monkeypatch.setattr(study, "serve", lambda items, db, **kw: seen.update(kw, items=items, db=db))
    assert cli.main(["study", "serve", f"--items={items_path}", f"--db={tmp_path / 's.db'}", "--port=8123",
                     "--conditions=default, sure_short", "--items_per_participant=3", "--attention_checks=1",
                     "--seed=7"]) == 0
    assert seen == dict(items=str(items_path), db=str(tmp_path / "s.db"), host="127.0.0.1", port=8123,
                        conditions=("default", "sure_short"), n_items_per_participant=3, attention_checks=1,
                        seed=7, entry="link", link_params=study.PROLIFIC_PARAMS, completion_code=None,
                        completion_url=None, expiry_minutes=60.0)
    seen.clear()
    assert cli.main(["study", "serve", f"--items={items_path}", f"--db={tmp_path / 's.db'}", "--entry=invite",
                     "--link_params=PID,SID,SESS", "--completion_code=C0DE", "--completion_url=https://x.test/done",
                     "--expiry_minutes=15"]) == 0
    assert (seen["entry"], seen["link_params"], seen["completion_code"], seen["completion_url"],
            seen["expiry_minutes"]) == ("invite", ("PID", "SID", "SESS"), "C0DE", "https://x.test/done", 15.0)


# ---------------------------------------------------------------------------------------------
# Entry: recruiting-platform links, single-use invitations, typed codes (only when asked for)


def test_link_entry_needs_the_platform_ids_and_binds_the_participant_to_its_session(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db)
    client = app.test_client()
    bare = client.get("/")
    assert bare.status_code == 400 and "recruiting platform" in bare.get_data(as_text=True)
    assert 'name="participant_code"' not in bare.get_data(as_text=True)  # no typing in a code
    sign_in(client, "5f1a2b3c4d5e6f7a8b9c0d1e")
    first = current_item(client)[0]
    assert submit(client, first, "50").status_code == 303
    # Someone who knows the id but not the session cannot take the participant over ...
    intruder = app.test_client()
    token = csrf(intruder)
    taken = intruder.post("/start", data={**link("5f1a2b3c4d5e6f7a8b9c0d1e", "another-session"), "csrf_token": token})
    assert taken.status_code == 403 and "another session" in taken.get_data(as_text=True)
    assert intruder.get("/item").status_code == 303  # still not signed in
    # ... while the participant's own link resumes where they stopped, in any browser.
    again = app.test_client()
    sign_in(again, "5f1a2b3c4d5e6f7a8b9c0d1e")
    assert current_item(again)[0] != first
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT entry, platform_study_id, platform_session_id FROM participants").fetchone()
    conn.close()
    assert row == ("link", "study-1", "5f1a2b3c4d5e6f7a8b9c0d1e-session")


def test_link_parameter_names_are_configurable(tmp_path, items_path):
    client = make_app(items_path, tmp_path / "s.db", link_params=("workerId", "hitId", "assignmentId")).test_client()
    html = client.get("/?workerId=W1&hitId=H1&assignmentId=A1").get_data(as_text=True)
    assert 'name="participant" value="W1"' in html and 'name="session" value="A1"' in html
    assert client.get("/?PROLIFIC_PID=W1&STUDY_ID=H1&SESSION_ID=A1").status_code == 400
    with pytest.raises(ValueError, match="link_params"):
        make_app(items_path, tmp_path / "t.db", link_params=("a", "a", "b"))


def test_invites_are_unguessable_single_use_and_stored_hashed(tmp_path, items_path):
    db = tmp_path / "s.db"
    tokens = study.create_invites(db, 3)
    assert len(set(tokens)) == 3 and all(len(t) >= 32 for t in tokens)
    app = make_app(items_path, db, entry="invite")
    alice, mallory = app.test_client(), app.test_client()
    assert alice.get("/").status_code == 400 and alice.get("/?invite=short").status_code == 400
    unknown = "x" * 32
    page = mallory.get(f"/?invite={unknown}").get_data(as_text=True)  # well-formed, never issued
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert mallory.post("/start", data={"invite": unknown, "csrf_token": token}).status_code == 403

    def use(client, invite):
        html = client.get(f"/?invite={invite}").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
        return client.post("/start", data={"invite": invite, "csrf_token": token})

    assert use(alice, tokens[0]).status_code == 303
    item_id = current_item(alice)[0]
    assert use(mallory, tokens[0]).status_code == 403  # used: nobody else gets in with it
    assert mallory.get("/item").status_code == 303
    # The owner opening her link again goes back to her item; her start form sent again signs her in again.
    assert alice.get(f"/?invite={tokens[0]}").headers["Location"].endswith("/item")
    with alice.session_transaction() as session:
        token = session["csrf"]
    assert alice.post("/start", data={"invite": tokens[0], "csrf_token": token}).status_code == 303
    assert current_item(alice)[0] == item_id
    assert use(mallory, tokens[1]).status_code == 303
    ids = participant_conditions(db)
    assert len(ids) == 2 and all(p.startswith("invite-") for p in ids)
    raw = db.read_bytes() + (db.with_name("s.db-wal").read_bytes() if db.with_name("s.db-wal").exists() else b"")
    assert not any(t.encode() in raw for t in tokens)  # only hashes are kept
    with pytest.raises(ValueError, match=">= 1"):
        study.create_invites(db, 0)


def test_invite_command_writes_the_links(tmp_path):
    from metacog_jax import cli

    out = tmp_path / "links.txt"
    assert cli.main(["study", "invite", f"--db={tmp_path / 's.db'}", "--n=4", "--base_url=https://study.test/",
                     f"--out={out}"]) == 0
    links = out.read_text().split()
    assert len(links) == 4 and all(re.fullmatch(r"https://study\.test/\?invite=[A-Za-z0-9_-]{32}", l) for l in links)


def test_typed_codes_only_when_asked_for_and_not_one_character(tmp_path, items_path):
    client = make_app(items_path, tmp_path / "s.db", entry="code").test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'name="participant_code"' in html
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    short = client.post("/start", data={"participant_code": "a", "csrf_token": token})
    assert short.status_code == 400 and "6 to 64" in short.get_data(as_text=True)
    assert client.post("/start", data={"participant_code": "abc123", "csrf_token": token}).status_code == 303
    with pytest.raises(ValueError, match="entry must be one of link, invite, code"):
        make_app(items_path, tmp_path / "t.db", entry="open")


def test_end_page_shows_the_completion_code_and_returns_to_the_platform(tmp_path, items_path):
    url = "https://app.prolific.com/submissions/complete?cc=C1A2B3"
    client = make_app(items_path, tmp_path / "s.db", attention_checks=0, n_items_per_participant=1,
                      completion_code="C1A2B3", completion_url=url).test_client()
    sign_in(client, "finisher")
    submit(client, current_item(client)[0], "70")
    html = client.get("/done").get_data(as_text=True)
    assert 'id="completion-code">C1A2B3<' in html
    assert 'href="https://app.prolific.com/submissions/complete?cc=C1A2B3"' in html
    assert 'http-equiv="refresh" content="5; url=https://app.prolific.com/submissions/complete?cc=C1A2B3"' in html
    for bad in ("javascript:alert(1)", 'https://x.test/"><script>'):
        with pytest.raises(ValueError, match="completion_url"):
            make_app(items_path, tmp_path / "t.db", completion_url=bad)


def test_balance_counts_completed_and_active_participants_only(tmp_path, items_path):
    db = tmp_path / "s.db"
    app = make_app(items_path, db, attention_checks=0, n_items_per_participant=1, expiry_minutes=30)

    def arrive(code):
        client = app.test_client()
        sign_in(client, code)
        return client

    def age(code, minutes):
        conn = sqlite3.connect(db)
        then = datetime.now(timezone.utc) - timedelta(minutes=minutes)
        conn.execute("UPDATE participants SET last_seen = ? WHERE participant_id = ?", (then.isoformat(), code))
        conn.commit()
        conn.close()

    arrive("p1")  # default
    p2 = arrive("p2")  # selected
    submit(p2, current_item(p2)[0], "40")  # completes
    age("p1", 45), age("p2", 45)  # p1 abandoned 45 min ago; p2 finished 45 min ago
    arrive("p3")  # default has no one who counts (p1 expired), selected has p2 (completed): default
    arrive("p4")  # default 1 (p3 active), selected 1: a tie goes to the first condition
    arrive("p5")
    assert participant_conditions(db) == {"p1": "default", "p2": "selected", "p3": "default", "p4": "default",
                                          "p5": "selected"}
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    assert study.condition_counts(conn, ("default", "selected"), 30 * 60) == {"default": 2, "selected": 2}
    conn.close()


def test_a_database_of_the_old_layout_is_refused(tmp_path, items_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE study_config (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO study_config VALUES ('seed', '0')")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="different study configuration .*schema"):
        make_app(items_path, db)
