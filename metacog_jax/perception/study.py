"""The human rating study of paper 2: a small Flask app where participants read a question, the
model's answer and an explanation, and say how likely they think the answer is correct.

Flow: `load_items` reads and validates the items file (JSONL, one item per line); `create_app`
builds the web app over an SQLite database; participants arrive by a recruiting platform's link (or a
single-use invitation, or a typed code; see ENTRIES), are assigned to the condition with the fewest
completed-or-active participants, rate their items one at a time in a fixed per-participant
order with attention checks mixed in, and every accepted rating is stored at once. `export_csv`
writes all accepted ratings as one CSV for the calibration-gap analysis.

Scale: participants enter a percentage (0 to 100) in a number field; the database and the export
hold it as a probability in [0, 1] (rating = percent / 100).

Conditions: "selected" shows each item's `selected_style` explanation (the one whose expressed
certainty matches the model's confidence); any other condition is a fixed style name ("default",
"sure_short", ...) shown for every item.

Concurrency: one sqlite3 connection per request, WAL journal, and every write in a
`BEGIN IMMEDIATE` transaction, so condition assignment stays balanced and a participant's current
item is read and answered atomically; UNIQUE(participant_id, item_id) is the last line of defence
against duplicates. The Flask development server (`serve`) is fine for a study run on localhost; a
real deployment would put the same WSGI app behind a production server such as waitress.

Input from the network is untrusted: CSRF token and same-origin check on every POST, a request size
limit, strict parsing of ratings and answers, 409 for answers that are not recorded, security headers
on every page, and an export whose cells cannot run as spreadsheet formulas (see `create_app`,
`export_csv`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import secrets
import sqlite3
import tempfile
import unicodedata
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import flask

from metacog_jax import artifacts
from metacog_jax.artifacts import iter_jsonl
from metacog_jax.perception.explanations import STYLE_NAMES

SELECTED_CONDITION = "selected"
ATTENTION_STYLE = "attention_check"
# Item ids with this prefix are reserved for the attention checks the app inserts.
ATTENTION_ID_PREFIX = "__attention_"
# Percent values an attention check may ask for; away from 0/50/100 so that a careless default
# answer does not pass by chance.
ATTENTION_TARGETS_PERCENT = (15, 25, 35, 45, 65, 75, 85)
# A check passes when the entered percent is within this many points of the requested one.
ATTENTION_TOLERANCE_PERCENT = 0.5
EXPORT_COLUMNS = (
    "participant_id",
    "condition",
    "item_id",
    "style",
    "rating",
    "own_answer",
    "is_attention_check",
    "attention_passed",
    "created_at",
)
MAX_OWN_ANSWER_CHARS = 200
MAX_OPTIONS = 26
# Every request body is small (a rating, an optional answer, two ids): anything larger is refused with a
# 413 before it is read, and nothing oversized is ever echoed back into a page.
MAX_REQUEST_BYTES = 16 * 1024
# A rating as typed: ASCII digits with an optional decimal point (and an optional "%"), nothing else
# (float() would also take "1_0", "1e2", "inf" or non-ASCII digits).
_RATING_PATTERN = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
MAX_RATING_CHARS = 16
# Sent with every page: no framing, no scripts or resources from elsewhere, no caching of participants'
# pages, no referrer to other sites (links carry participant ids; "no-referrer" would make browsers send
# "Origin: null" on the study's own forms).
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
# How participants arrive (create_app's `entry`):
#   "link"   - a recruiting platform's link carrying its participant, study and session ids in the query
#              (Prolific: ?PROLIFIC_PID=...&STUDY_ID=...&SESSION_ID=...); a participant id comes back only
#              with the session id it started with, so knowing someone's id is not enough to take over.
#   "invite" - ?invite=TOKEN, an unguessable single-use token made by `create_invites`.
#   "code"   - a code typed on the start page (anyone who knows or guesses a code gets that session).
ENTRIES = ("link", "invite", "code")
PROLIFIC_PARAMS = ("PROLIFIC_PID", "STUDY_ID", "SESSION_ID")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_CODE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{5,63}", re.ASCII)
_INVITE_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,64}", re.ASCII)
SCHEMA_VERSION = "2"
_SQLITE_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class StudyItem:
    """One item to rate.

    `options` is empty for open-ended questions; for multiple choice it is shown lettered A, B, ...
    `model_confidence` is the model's internal P(correct) in [0, 1]. `explanations` maps a style
    name (see STYLE_NAMES) to its text; `selected_style` is the style matched to the model's
    confidence. `line` is the 1-based line of the items file the item came from (0 for the
    attention checks the app makes), kept so later errors can point at the file.
    """

    item_id: str
    question: str
    options: tuple[str, ...]
    model_answer: str
    correct: bool
    model_confidence: float
    explanations: dict[str, str]
    selected_style: str
    line: int = 0

    def to_record(self) -> dict[str, Any]:
        """The item as the JSON object it was read from (without `line`)."""
        return {
            "item_id": self.item_id,
            "question": self.question,
            "options": list(self.options),
            "model_answer": self.model_answer,
            "correct": self.correct,
            "model_confidence": self.model_confidence,
            "explanations": dict(self.explanations),
            "selected_style": self.selected_style,
        }


@dataclasses.dataclass(frozen=True)
class ScheduleSlot:
    """One position in a participant's sequence: a real item, or an attention check.

    `attention_target` is the probability in [0, 1] the check asks the participant to enter, or
    None for a real item.
    """

    item_id: str
    attention_target: float | None = None

    @property
    def is_attention_check(self) -> bool:
        return self.attention_target is not None


class ItemsFileError(ValueError):
    """The items file is malformed; the message names file, line and field."""


# ----------------------------------------------------------------------------------------------
# Items


def _check_item(record: Any, where: str) -> StudyItem:
    """Validates one parsed JSON line; `where` is "file:line" for error messages."""
    if not isinstance(record, dict):
        raise ItemsFileError(f"{where}: expected a JSON object, got {type(record).__name__}")

    def field(name: str) -> Any:
        if name not in record:
            raise ItemsFileError(f"{where}: field '{name}' is missing")
        return record[name]

    def text(name: str, allow_empty: bool = False) -> str:
        value = field(name)
        if not isinstance(value, str):
            raise ItemsFileError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise ItemsFileError(f"{where}: field '{name}' is empty")
        return value

    item_id = text("item_id")
    if item_id.startswith(ATTENTION_ID_PREFIX):
        raise ItemsFileError(
            f"{where}: field 'item_id' {item_id!r} starts with the reserved prefix {ATTENTION_ID_PREFIX!r}"
        )
    question = text("question")
    options = field("options")
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise ItemsFileError(f"{where}: field 'options' must be a list of non-empty strings")
    if len(options) > MAX_OPTIONS:
        raise ItemsFileError(f"{where}: field 'options' has {len(options)} entries, at most {MAX_OPTIONS} allowed")
    model_answer = text("model_answer")
    correct = field("correct")
    if not isinstance(correct, bool):
        raise ItemsFileError(f"{where}: field 'correct' must be true or false, got {correct!r}")
    confidence = field("model_confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise ItemsFileError(f"{where}: field 'model_confidence' must be a number, got {confidence!r}")
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise ItemsFileError(f"{where}: field 'model_confidence' must be in [0, 1], got {confidence!r}")
    explanations = field("explanations")
    if not isinstance(explanations, dict) or not explanations:
        raise ItemsFileError(f"{where}: field 'explanations' must be a non-empty object style -> text")
    for style, explanation in explanations.items():
        if style not in STYLE_NAMES:
            raise ItemsFileError(
                f"{where}: field 'explanations' has unknown style {style!r}; known: {', '.join(STYLE_NAMES)}"
            )
        if not isinstance(explanation, str) or not explanation.strip():
            raise ItemsFileError(f"{where}: field 'explanations.{style}' must be a non-empty string")
    selected_style = text("selected_style")
    if selected_style not in explanations:
        raise ItemsFileError(
            f"{where}: field 'selected_style' is {selected_style!r}, which is not among its explanations "
            f"({', '.join(explanations)})"
        )
    return StudyItem(
        item_id=item_id,
        question=question,
        options=tuple(options),
        model_answer=model_answer,
        correct=correct,
        model_confidence=float(confidence),
        explanations=dict(explanations),
        selected_style=selected_style,
    )


def load_items(path: str | os.PathLike[str]) -> list[StudyItem]:
    """Reads and validates a JSONL items file (blank lines skipped).

    Returns the items in file order. Raises FileNotFoundError if the file is absent and
    ItemsFileError naming file:line and field for the first malformed line, a duplicate item_id,
    or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file {path} does not exist")
    items: list[StudyItem] = []
    first_line: dict[str, int] = {}
    for line_number, record in iter_jsonl(path, ItemsFileError):
        where = f"{path}:{line_number}"
        item = dataclasses.replace(_check_item(record, where), line=line_number)
        if item.item_id in first_line:
            raise ItemsFileError(
                f"{where}: field 'item_id' {item.item_id!r} repeats line {first_line[item.item_id]}"
            )
        first_line[item.item_id] = line_number
        items.append(item)
    if not items:
        raise ItemsFileError(f"{path}: no items (the file is empty)")
    return items


def explanation_style(item: StudyItem, condition: str) -> str:
    """The explanation style an item shows under a condition ("selected" or a fixed style name)."""
    return item.selected_style if condition == SELECTED_CONDITION else condition


def attention_check_item(item_id: str, target: float) -> StudyItem:
    """An attention-check item whose explanation asks the participant to enter `target` (a
    probability in [0, 1], shown to the participant as a percentage)."""
    percent = _format_percent(target * 100.0)
    explanation = (
        "This item checks that you are reading the explanations. To show you are reading, "
        f"please enter {percent} as your answer below, whatever you think of the model's answer."
    )
    return StudyItem(
        item_id=item_id,
        question="Which of these colours is a primary colour of light?",
        options=("Purple", "Red", "Brown", "Grey"),
        model_answer="B",
        correct=True,
        model_confidence=1.0,
        explanations={"default": explanation},
        selected_style="default",
    )


def _format_percent(percent: float) -> str:
    return f"{percent:g}"


def _seeded_rng(seed: int, participant_code: str) -> random.Random:
    # Hash to an int ourselves so the order does not depend on how `random` seeds from strings.
    digest = hashlib.sha256(f"{seed}\x00{participant_code}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def participant_schedule(
    item_ids: Sequence[str],
    participant_code: str,
    n_items: int | None = None,
    attention_checks: int = 2,
    seed: int = 0,
) -> list[ScheduleSlot]:
    """The deterministic sequence of slots one participant sees.

    Shuffles `item_ids` with a generator seeded by (seed, participant_code), keeps the first
    `n_items` (all if None), then inserts `attention_checks` checks at seeded positions, one in
    each of that many roughly equal stretches of the sequence so they do not bunch up. Length:
    n_items + attention_checks.
    """
    if n_items is None:
        n_items = len(item_ids)
    if not 1 <= n_items <= len(item_ids):
        raise ValueError(f"n_items must be in [1, {len(item_ids)}], got {n_items}")
    if attention_checks < 0:
        raise ValueError(f"attention_checks must be >= 0, got {attention_checks}")
    rng = _seeded_rng(seed, participant_code)
    order = list(item_ids)
    rng.shuffle(order)
    slots = [ScheduleSlot(item_id) for item_id in order[:n_items]]
    total = n_items + attention_checks
    positions = []
    for k in range(attention_checks):
        lo, hi = k * total // attention_checks, (k + 1) * total // attention_checks
        positions.append(rng.randrange(lo, hi))
    for k, position in enumerate(positions):
        target = rng.choice(ATTENTION_TARGETS_PERCENT) / 100.0
        slots.insert(position, ScheduleSlot(f"{ATTENTION_ID_PREFIX}{k + 1}", target))
    return slots


# ----------------------------------------------------------------------------------------------
# Database

_INVITES_TABLE = """CREATE TABLE IF NOT EXISTS invites (
    token_sha256 TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    participant_id TEXT,
    used_at TEXT
)"""
_SCHEMA = _INVITES_TABLE + ";" + """
CREATE TABLE IF NOT EXISTS study_config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    participant_id TEXT PRIMARY KEY,
    condition TEXT NOT NULL,
    schedule TEXT NOT NULL,
    n_slots INTEGER NOT NULL,
    entry TEXT NOT NULL,
    platform_study_id TEXT,
    platform_session_id TEXT,
    created_at TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    participant_id TEXT NOT NULL REFERENCES participants(participant_id),
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    style TEXT NOT NULL,
    rating REAL NOT NULL CHECK (rating >= 0.0 AND rating <= 1.0),
    own_answer TEXT NOT NULL,
    is_attention_check INTEGER NOT NULL,
    attention_passed INTEGER,
    created_at TEXT NOT NULL,
    UNIQUE (participant_id, item_id),
    UNIQUE (participant_id, position)
);
"""


def _connect(db_path: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        # The URI is built from the resolved path, percent-encoded (as_uri), so "%41", "#" or "?" in a
        # directory name open that very file rather than another one or none.
        conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True, timeout=_SQLITE_TIMEOUT_S)
    else:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE below, so a
        # read-then-write never runs on a stale snapshot.
        conn = sqlite3.connect(db_path, timeout=_SQLITE_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA foreign_keys = ON")
    conn.row_factory = sqlite3.Row
    return conn


class _WriteTransaction:
    """`with _WriteTransaction(conn):` runs the block in BEGIN IMMEDIATE ... COMMIT (ROLLBACK on
    error). IMMEDIATE takes the write lock up front, which serializes concurrent writers instead of
    letting two of them read the same state and then both write."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _init_db(db_path: Path, config: dict[str, str]) -> None:
    """Creates the schema and records the study configuration; refuses a database made for a
    different configuration, since stored schedules and conditions would no longer match."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(db_path)
    try:
        # WAL lets readers (page views, exports) run while one writer commits.
        conn.execute("PRAGMA journal_mode = WAL")
        with _WriteTransaction(conn):
            # Statement by statement: executescript would commit the open transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            stored = dict(conn.execute("SELECT key, value FROM study_config").fetchall())
            if not stored:
                conn.executemany("INSERT INTO study_config (key, value) VALUES (?, ?)", sorted(config.items()))
            elif stored != config:
                differing = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
                raise ValueError(
                    f"database {db_path} was created for a different study configuration "
                    f"(differs in: {', '.join(differing)}); use a new database file"
                )
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# Ratings


def parse_rating_percent(raw: str | None) -> float:
    """Parses the participant's percentage ("0" to "100", an optional trailing "%") into a
    probability in [0, 1]. Raises ValueError with a message fit to show the participant."""
    if raw is None or not raw.strip():
        raise ValueError("Please enter a probability between 0 and 100.")
    text = raw.strip().removesuffix("%").strip()
    if len(text) > MAX_RATING_CHARS or not _RATING_PATTERN.fullmatch(text):
        shown = f"'{text}'" if len(text) <= MAX_RATING_CHARS and text.isprintable() else "That"
        raise ValueError(f"{shown} is not a number. Please enter a number between 0 and 100, digits only "
                         "(for example 70 or 62.5).")
    percent = float(text)
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"{text} is out of range. Please enter a number between 0 and 100.")
    return percent / 100.0


def _option_letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _parse_own_answer(raw: str | None, item: StudyItem) -> str:
    answer = (raw or "").strip()
    if any(unicodedata.category(ch) == "Cc" for ch in answer):
        raise ValueError("Your own answer contains a control character (such as a line break or tab); please "
                         "type it on one line.")
    if item.options:
        if answer and answer not in _option_letters(len(item.options)):
            raise ValueError("Your own answer must be one of the option letters, or left empty.")
    elif len(answer) > MAX_OWN_ANSWER_CHARS:
        raise ValueError(f"Your own answer is too long (at most {MAX_OWN_ANSWER_CHARS} characters).")
    return answer


# ----------------------------------------------------------------------------------------------
# App


def _validate_conditions(conditions: Sequence[str], items: Sequence[StudyItem], items_path: Path) -> tuple[str, ...]:
    conditions = tuple(conditions)
    if not conditions:
        raise ValueError("conditions is empty; give at least one (e.g. ('default', 'selected'))")
    if len(set(conditions)) != len(conditions):
        raise ValueError(f"conditions has duplicates: {conditions}")
    for condition in conditions:
        if condition != SELECTED_CONDITION and condition not in STYLE_NAMES:
            raise ValueError(
                f"unknown condition {condition!r}; use {SELECTED_CONDITION!r} or a style: {', '.join(STYLE_NAMES)}"
            )
        if condition == SELECTED_CONDITION:
            continue
        for item in items:
            if condition not in item.explanations:
                raise ItemsFileError(
                    f"{items_path}:{item.line}: field 'explanations' lacks style {condition!r}, "
                    f"which condition {condition!r} shows for every item"
                )
    return conditions


def condition_counts(conn: sqlite3.Connection, conditions: Sequence[str], expiry_s: float,
                     now: datetime | None = None) -> dict[str, int]:
    """Participants per condition who count for balance: those who completed their schedule and those
    active within the last `expiry_s` seconds; abandoned sessions stop counting once they expire."""
    cutoff = ((now or datetime.now(timezone.utc)).timestamp() - expiry_s)
    counts = dict.fromkeys(conditions, 0)
    rows = conn.execute(
        "SELECT p.condition, p.n_slots, p.last_seen, (SELECT COUNT(*) FROM responses r "
        "WHERE r.participant_id = p.participant_id) AS answered FROM participants p").fetchall()
    for row in rows:
        if row["condition"] in counts and (row["answered"] >= row["n_slots"]
                                           or datetime.fromisoformat(row["last_seen"]).timestamp() >= cutoff):
            counts[row["condition"]] += 1
    return counts


def _register_participant(conn: sqlite3.Connection, code: str, conditions: tuple[str, ...], make_schedule: Any,
                          expiry_s: float, entry: str, platform: tuple[str, str] | None = None) -> None:
    """Registers `code` (inside the caller's write transaction) in the condition with the fewest
    completed-or-active participants (ties: the earliest in `conditions`)."""
    counts = condition_counts(conn, conditions, expiry_s)
    condition = min(conditions, key=lambda c: (counts[c], conditions.index(c)))
    schedule: list[ScheduleSlot] = make_schedule(code)
    now = _utc_now()
    study_id, session_id = platform if platform is not None else (None, None)
    conn.execute(
        "INSERT INTO participants (participant_id, condition, schedule, n_slots, entry, platform_study_id, "
        "platform_session_id, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (code, condition, _encode_schedule(schedule), len(schedule), entry, study_id, session_id, now, now),
    )


class EntryRefused(Exception):
    """A sign-in the study turns away; the message is shown to the person."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_invites(db_path: str | os.PathLike[str], n: int) -> list[str]:
    """Makes `n` single-use invite tokens for the study in `db_path` (created if absent) and returns them.
    Only their SHA-256 is stored, so the tokens are shown this once: hand out the links made from them."""
    if n < 1:
        raise ValueError(f"the number of invites must be >= 1, got {n}")
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tokens = [secrets.token_urlsafe(24) for _ in range(n)]
    conn = _connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        with _WriteTransaction(conn):
            conn.execute(_INVITES_TABLE)  # the invites table only: the study itself may not be set up yet
            conn.executemany("INSERT INTO invites (token_sha256, created_at) VALUES (?, ?)",
                             [(_hash_token(t), _utc_now()) for t in tokens])
    finally:
        conn.close()
    return tokens


def _persistent_key(db_path: Path) -> bytes:
    """The session-signing key kept beside the database (`<db>.key`, mode 0600), made on first use; a
    restarted server reads the same key, so participants stay signed in."""
    key_path = db_path.with_name(db_path.name + ".key")
    if not key_path.exists():
        # Written whole to a private temporary file, then linked into place: a second server starting at
        # the same moment either wins the link or reads the winner's complete key.
        fd, tmp = tempfile.mkstemp(dir=key_path.parent, prefix=key_path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, key_path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    key = key_path.read_bytes()
    if len(key) < 32:
        raise ValueError(f"session key file {key_path} holds {len(key)} bytes, expected 32 or more; delete it to "
                         "make a new one (participants will then have to sign in again)")
    return key


def _short_page(message: str, status: int) -> tuple[str, int]:
    """A plain page for refused requests (no template, nothing from the request in it)."""
    return flask.render_template("message.html", message=message), status


def _encode_schedule(schedule: Sequence[ScheduleSlot]) -> str:
    return json.dumps([[slot.item_id, slot.attention_target] for slot in schedule])


def _decode_schedule(text: str) -> list[ScheduleSlot]:
    return [ScheduleSlot(item_id, target) for item_id, target in json.loads(text)]


def _participant_state(conn: sqlite3.Connection, code: str) -> tuple[str, list[ScheduleSlot], int] | None:
    """(condition, schedule, number answered) for a registered participant, else None."""
    row = conn.execute("SELECT condition, schedule FROM participants WHERE participant_id = ?", (code,)).fetchone()
    if row is None:
        return None
    answered = conn.execute("SELECT COUNT(*) FROM responses WHERE participant_id = ?", (code,)).fetchone()[0]
    return row["condition"], _decode_schedule(row["schedule"]), answered


def create_app(
    items_path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    conditions: Sequence[str] = ("default", SELECTED_CONDITION),
    n_items_per_participant: int | None = None,
    attention_checks: int = 2,
    seed: int = 0,
    secret_key: str | bytes | None = None,
    entry: str = "link",
    link_params: Sequence[str] = PROLIFIC_PARAMS,
    completion_code: str | None = None,
    completion_url: str | None = None,
    expiry_minutes: float = 60.0,
) -> flask.Flask:
    """Builds the study web app.

    items_path: JSONL items file (see `load_items`). db_path: SQLite file, created if absent; a
    database created for another configuration (items, conditions, sizes, seed) is refused.
    conditions: "selected" and/or fixed style names, assigned so that condition sizes differ by at
    most one. n_items_per_participant: how many real items each participant rates (None: all).
    attention_checks: checks inserted per participant. seed: with the participant code, fixes each
    participant's order. secret_key signs the session cookie; None uses the key kept beside the
    database (`<db>.key`, made on first use, readable by its owner only), so a restart keeps everyone
    signed in.

    entry: how participants arrive, one of ENTRIES ("link": the platform's ids in the query string, named
    by `link_params` = (participant, study, session); "invite": single-use tokens from `create_invites`;
    "code": a typed code). completion_code: shown on the end page; completion_url: the platform's
    completion address, linked and opened from the end page. expiry_minutes: a participant who has
    neither completed nor been active for this long stops counting towards condition balance.

    Every form carries a per-session CSRF token and a POST without it (or from another origin) is
    refused with 400/403; request bodies over MAX_REQUEST_BYTES get 413; an answer that is not recorded
    (stale, sent twice, after the last item) gets 409 with the participant's current page.
    """
    items_path = Path(items_path)
    db_path = Path(db_path)
    items = load_items(items_path)
    conditions = _validate_conditions(conditions, items, items_path)
    if n_items_per_participant is not None and not 1 <= n_items_per_participant <= len(items):
        raise ValueError(f"n_items_per_participant must be in [1, {len(items)}], got {n_items_per_participant}")
    if attention_checks < 0:
        raise ValueError(f"attention_checks must be >= 0, got {attention_checks}")
    if entry not in ENTRIES:
        raise ValueError(f"entry must be one of {', '.join(ENTRIES)}, got {entry!r}")
    link_params = tuple(link_params)
    if len(link_params) != 3 or len(set(link_params)) != 3 or not all(_ID_PATTERN.fullmatch(p) for p in link_params):
        raise ValueError(f"link_params must name three different query parameters (participant, study, session), "
                         f"got {link_params}")
    if completion_url is not None and not re.fullmatch(r"https?://[^\s\"'<>]+", completion_url):
        raise ValueError(f"completion_url must be an http(s) address, got {completion_url!r}")
    if completion_code is not None and not _ID_PATTERN.fullmatch(completion_code):
        raise ValueError(f"completion_code must be 1-64 letters, digits, '.', '_' or '-', got {completion_code!r}")
    if not expiry_minutes > 0:
        raise ValueError(f"expiry_minutes must be > 0, got {expiry_minutes}")
    expiry_s = 60.0 * expiry_minutes
    items_by_id = {item.item_id: item for item in items}
    item_ids = [item.item_id for item in items]
    items_digest = hashlib.sha256(
        json.dumps([item.to_record() for item in items], sort_keys=True).encode()
    ).hexdigest()
    _init_db(
        db_path,
        {
            "items_sha256": items_digest,
            "conditions": json.dumps(list(conditions)),
            "n_items_per_participant": json.dumps(n_items_per_participant),
            "attention_checks": json.dumps(attention_checks),
            "seed": json.dumps(seed),
            "schema": SCHEMA_VERSION,
        },
    )

    def make_schedule(code: str) -> list[ScheduleSlot]:
        return participant_schedule(item_ids, code, n_items_per_participant, attention_checks, seed)

    def item_for(slot: ScheduleSlot) -> StudyItem:
        if slot.attention_target is not None:
            return attention_check_item(slot.item_id, slot.attention_target)
        return items_by_id[slot.item_id]

    app = flask.Flask(__name__, template_folder="study_templates")
    app.config.update(
        SECRET_KEY=secret_key if secret_key is not None else _persistent_key(db_path),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        MAX_FORM_MEMORY_SIZE=MAX_REQUEST_BYTES,
        # Lax keeps the session cookie off cross-site POSTs, so another site cannot submit ratings.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        STUDY_DB_PATH=str(db_path),
    )
    # Model text goes into every page: escape everything, whatever a template's file name.
    app.jinja_env.autoescape = True

    def db() -> sqlite3.Connection:
        if "study_db" not in flask.g:
            flask.g.study_db = _connect(db_path)
        return flask.g.study_db

    @app.teardown_appcontext
    def close_db(_exc: BaseException | None) -> None:
        conn = flask.g.pop("study_db", None)
        if conn is not None:
            conn.close()

    def csrf_token() -> str:
        if not isinstance(flask.session.get("csrf"), str):
            flask.session["csrf"] = secrets.token_urlsafe(32)
        return flask.session["csrf"]

    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def check_post():
        if flask.request.method != "POST":
            return None
        origin = flask.request.headers.get("Origin")
        if origin is not None and origin != flask.request.host_url.rstrip("/"):
            return _short_page("This form was sent from another site and was not accepted.", 403)
        sent, expected = flask.request.form.get("csrf_token", ""), flask.session.get("csrf")
        if not isinstance(expected, str) or not secrets.compare_digest(sent.encode(), expected.encode()):
            return _short_page("This page has expired. Please go back, reload the page and try again.", 400)
        return None

    @app.after_request
    def security_headers(response: flask.Response) -> flask.Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.errorhandler(413)
    def too_large(_error):
        return _short_page("That was far more text than an answer needs and was not accepted. Please go "
                           "back and try again.", 413)

    def render_item(code: str, condition: str, schedule: list[ScheduleSlot], position: int,
                    error: str | None = None, form: dict[str, str] | None = None, status: int = 200,
                    notice: str | None = None):
        slot = schedule[position]
        item = item_for(slot)
        style = ATTENTION_STYLE if slot.is_attention_check else explanation_style(item, condition)
        explanation = item.explanations["default" if slot.is_attention_check else style]
        letters = _option_letters(len(item.options))
        answer_text = item.model_answer
        if item.model_answer in letters:
            answer_text = f"{item.model_answer}. {item.options[letters.index(item.model_answer)]}"
        body = flask.render_template(
            "item.html",
            participant_id=code,
            item_id=slot.item_id,
            number=position + 1,
            total=len(schedule),
            question=item.question,
            options=list(zip(letters, item.options)),
            answer_text=answer_text,
            explanation=explanation,
            error=error,
            notice=notice,
            form=form or {},
        )
        return body, status

    def done_page(code: str, schedule: list[ScheduleSlot], notice: str | None = None, status: int = 200):
        return flask.render_template("done.html", participant_id=code, total=len(schedule), notice=notice,
                                     completion_code=completion_code, completion_url=completion_url), status

    def start_page(error: str | None = None, status: int = 200, **fields: str):
        return flask.render_template("start.html", entry=entry, error=error, fields=fields,
                                     link_params=link_params), status

    @app.get("/")
    def start():
        if current_participant() is not None:
            return flask.redirect(flask.url_for("item_page"), code=303)
        args = flask.request.args
        if entry == "code":
            return start_page()
        if entry == "invite":
            token = args.get("invite", "")
            if not _INVITE_PATTERN.fullmatch(token):
                return start_page("Please open the study from the invitation link you were given.", 400)
            return start_page(invite=token)
        ids = [args.get(p, "") for p in link_params]
        if not all(_ID_PATTERN.fullmatch(v) for v in ids):
            return start_page("Please open the study from the link on your recruiting platform.", 400)
        return start_page(**dict(zip(("participant", "study", "session"), ids)))

    def sign_in_from_form(conn: sqlite3.Connection, form) -> str:
        """The participant id this start form signs in (registering it if new); EntryRefused if it may not."""
        if entry == "code":
            code = (form.get("participant_code") or "").strip()
            if not _CODE_PATTERN.fullmatch(code):
                raise EntryRefused("Please enter your participant code: 6 to 64 letters, digits, '.', '_' or '-', "
                                   "starting with a letter or digit.", 400)
            if conn.execute("SELECT 1 FROM participants WHERE participant_id = ?", (code,)).fetchone() is None:
                _register_participant(conn, code, conditions, make_schedule, expiry_s, entry)
            return code
        if entry == "invite":
            token = form.get("invite", "")
            row = conn.execute("SELECT participant_id FROM invites WHERE token_sha256 = ?",
                               (_hash_token(token),)).fetchone() if _INVITE_PATTERN.fullmatch(token) else None
            if row is None:
                raise EntryRefused("This invitation link is not valid. Please check that you copied all of it.")
            if row["participant_id"] is not None:
                if flask.session.get("participant_id") == row["participant_id"]:
                    return row["participant_id"]
                raise EntryRefused("This invitation has already been used. Each invitation works once, in the "
                                   "browser where it was first opened.")
            code = "invite-" + _hash_token(token)[:16]
            _register_participant(conn, code, conditions, make_schedule, expiry_s, entry)
            conn.execute("UPDATE invites SET participant_id = ?, used_at = ? WHERE token_sha256 = ?",
                         (code, _utc_now(), _hash_token(token)))
            return code
        ids = [form.get(k, "") for k in ("participant", "study", "session")]
        if not all(_ID_PATTERN.fullmatch(v) for v in ids):
            raise EntryRefused("Please open the study from the link on your recruiting platform.", 400)
        code, study_id, session_id = ids
        row = conn.execute("SELECT platform_study_id, platform_session_id FROM participants WHERE participant_id = ?",
                           (code,)).fetchone()
        if row is None:
            _register_participant(conn, code, conditions, make_schedule, expiry_s, entry, (study_id, session_id))
        elif (row["platform_study_id"], row["platform_session_id"]) != (study_id, session_id):
            raise EntryRefused("This participant id has already started the study in another session. Please "
                               "continue from the link of that session.")
        return code

    @app.post("/start")
    def start_post():
        conn = db()
        try:
            with _WriteTransaction(conn):
                code = sign_in_from_form(conn, flask.request.form)
                conn.execute("UPDATE participants SET last_seen = ? WHERE participant_id = ?", (_utc_now(), code))
        except EntryRefused as refused:
            return start_page(str(refused), refused.status)
        flask.session.clear()  # a fresh session (and CSRF token) for the signed-in participant
        flask.session["participant_id"] = code
        return flask.redirect(flask.url_for("item_page"), code=303)

    def current_participant() -> tuple[str, str, list[ScheduleSlot], int] | None:
        code = flask.session.get("participant_id")
        if not isinstance(code, str):
            return None
        state = _participant_state(db(), code)
        if state is None:
            return None
        return (code, *state)

    @app.get("/item")
    def item_page():
        participant = current_participant()
        if participant is None:
            return flask.redirect(flask.url_for("start"), code=303)
        code, condition, schedule, answered = participant
        if answered >= len(schedule):
            return flask.redirect(flask.url_for("done"), code=303)
        return render_item(code, condition, schedule, answered)

    @app.post("/item")
    def item_post():
        participant = current_participant()
        if participant is None:
            return flask.redirect(flask.url_for("start"), code=303)
        code, condition, schedule, _ = participant
        form = flask.request.form
        submitted_id = form.get("item_id", "")
        conn = db()
        with _WriteTransaction(conn):
            # Read the current position inside the write transaction: a second submit of the same
            # item (double click, stale tab) then sees the first one's row and is turned away.
            answered = conn.execute(
                "SELECT COUNT(*) FROM responses WHERE participant_id = ?", (code,)
            ).fetchone()[0]
            if answered >= len(schedule):
                return done_page(code, schedule, "You have already rated all items; that answer was not "
                                 "recorded.", 409)
            slot = schedule[answered]
            if submitted_id != slot.item_id:
                return render_item(code, condition, schedule, answered, notice=(
                    "That answer was for an item that is not your current one (sent twice, or from an old "
                    "page), so it was not recorded. Here is your current item."), status=409)
            item = item_for(slot)
            try:
                rating = parse_rating_percent(form.get("rating"))
                own_answer = _parse_own_answer(form.get("own_answer"), item)
            except ValueError as e:
                # Kept in the form only when short enough to be a real answer: nothing oversized is echoed.
                kept = {k: form.get(k, "") for k in ("rating", "own_answer")
                        if len(form.get(k, "")) <= MAX_OWN_ANSWER_CHARS}
                return render_item(code, condition, schedule, answered, error=str(e), form=kept, status=400)
            if slot.attention_target is not None:
                style = ATTENTION_STYLE
                passed: int | None = int(
                    abs(rating - slot.attention_target) * 100.0 <= ATTENTION_TOLERANCE_PERCENT + 1e-9
                )
            else:
                style = explanation_style(item, condition)
                passed = None
            try:
                conn.execute(
                    "INSERT INTO responses (participant_id, position, item_id, style, rating, own_answer, "
                    "is_attention_check, attention_passed, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (code, answered, slot.item_id, style, rating, own_answer,
                     int(slot.is_attention_check), passed, _utc_now()),
                )
                conn.execute("UPDATE participants SET last_seen = ? WHERE participant_id = ?", (_utc_now(), code))
            except sqlite3.IntegrityError:
                # Unreachable while the count check above holds; kept as a guard, never a duplicate.
                return _short_page("That answer was already recorded.", 409)
        if answered + 1 >= len(schedule):
            return flask.redirect(flask.url_for("done"), code=303)
        return flask.redirect(flask.url_for("item_page"), code=303)

    @app.get("/done")
    def done():
        participant = current_participant()
        if participant is None:
            return flask.redirect(flask.url_for("start"), code=303)
        code, _, schedule, answered = participant
        if answered < len(schedule):
            return flask.redirect(flask.url_for("item_page"), code=303)
        return done_page(code, schedule)

    return app


# ----------------------------------------------------------------------------------------------
# Export and serving


def iter_responses(db_path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yields every accepted response as a dict keyed by EXPORT_COLUMNS, ordered by participant
    then position. rating is a probability in [0, 1]; is_attention_check is 0/1;
    attention_passed is 0/1 for checks and None otherwise; created_at is UTC ISO 8601."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"study database {db_path} does not exist")
    conn = _connect(db_path, read_only=True)
    try:
        rows = conn.execute(
            "SELECT r.participant_id, p.condition, r.item_id, r.style, r.rating, r.own_answer, "
            "r.is_attention_check, r.attention_passed, r.created_at "
            "FROM responses r JOIN participants p ON p.participant_id = r.participant_id "
            "ORDER BY r.participant_id, r.position"
        ).fetchall()
    finally:
        conn.close()
    for row in rows:
        yield {column: row[column] for column in EXPORT_COLUMNS}


def export_csv(db_path: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> int:
    """Writes all accepted responses to `out_csv` with columns EXPORT_COLUMNS (see
    `iter_responses`; attention_passed is empty for non-check rows). Text cells that a spreadsheet would
    run as a formula (a leading = + - @, tab or CR) are escaped with a leading ' (`artifacts.
    spreadsheet_cell`; `gap.read_ratings_csv` reads them back exactly). The file is written to a
    temporary name and renamed, so a failure leaves no half-written CSV. Returns the row count."""
    rows = list(iter_responses(db_path))
    with artifacts.atomic_output(out_csv, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else artifacts.spreadsheet_cell(v) if isinstance(v, str) else v)
                             for k, v in row.items()})
    return len(rows)


def serve(
    items_path: str | os.PathLike[str],
    db_path: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    **app_kwargs: Any,
) -> None:
    """Runs the study on Flask's threaded development server until interrupted.

    Good enough for a study on localhost or a lab network; for a public deployment serve the
    `create_app(...)` WSGI app with a production server (e.g. waitress) behind HTTPS.
    `app_kwargs` go to `create_app`.
    """
    app = create_app(items_path, db_path, **app_kwargs)
    app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
