"""End-to-end tests of the rating study in a real headless Chromium, driven by Selenium.

The app runs on a werkzeug server in a background thread on 127.0.0.1 (free port). Needs Debian's
`chromium` and `chromium-driver` and the `selenium` package: `bash tests/browser_setup.sh` installs
all three.
"""

from __future__ import annotations

import csv
import json
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest

INSTALL_HINT = "run `bash tests/browser_setup.sh` (installs Debian chromium + chromium-driver and pip selenium)"
pytest.importorskip("flask", reason="the study app needs flask (pip install 'flask>=3')")
pytest.importorskip("selenium", reason=f"selenium is not installed; {INSTALL_HINT}")
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"chromium or chromedriver not found on PATH; {INSTALL_HINT}", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from metacog_jax.perception import study  # noqa: E402

WAIT_S = 20


def write_items(path: Path) -> Path:
    records = []
    for i in range(3):
        records.append({
            "item_id": f"b{i}",
            "question": f"Browser question {i}?",
            "options": ["first", "second", "third"] if i != 1 else [],
            "model_answer": "B" if i != 1 else "forty-two",
            "correct": i != 2,
            "model_confidence": 0.35 + 0.3 * i,
            "explanations": {"default": f"Default explanation {i}.", "sure_long": f"I am sure about {i}."},
            "selected_style": "sure_long",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def live_study(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, database path) of the study served on a free port of 127.0.0.1."""
    db = tmp_path / "study.db"
    app = study.create_app(write_items(tmp_path / "items.jsonl"), db, conditions=("default", "selected"),
                           attention_checks=0, secret_key="browser-test")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", db
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def new_browser(tmp_path: Path) -> Iterator:
    """Factory of headless Chromium sessions, each with its own fresh profile; all quit at the end."""
    drivers = []

    def make():
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        profile = tmp_path / f"profile{len(drivers)}"
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1000,900", f"--user-data-dir={profile}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        driver.set_page_load_timeout(WAIT_S)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.quit()


def start(driver, base_url: str, code: str) -> None:
    """Arrives by the participant's recruiting-platform link and presses Start."""
    driver.get(f"{base_url}/?PROLIFIC_PID={code}&STUDY_ID=browser-study&SESSION_ID={code}-session")
    driver.find_element(By.ID, "start").click()
    WebDriverWait(driver, WAIT_S).until(EC.presence_of_element_located((By.ID, "progress")))


def shown_item(driver) -> tuple[str, str]:
    """(item_id, progress text) of the item on screen."""
    item_id = driver.find_element(By.NAME, "item_id").get_attribute("value")
    return item_id, driver.find_element(By.ID, "progress").text


def answer(driver, percent: str, own_answer: str | None = None) -> None:
    """Types a rating (and an own answer if given) and submits; waits for the next page."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    field = driver.find_element(By.ID, "rating")
    field.clear()
    field.send_keys(percent)
    if own_answer is not None:
        own = driver.find_element(By.ID, "own_answer")
        if own.tag_name == "select":
            Select(own).select_by_value(own_answer)
        else:
            own.clear()
            own.send_keys(own_answer)
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, WAIT_S).until(page_replaced(old_page))


def page_replaced(old_page):
    """Like EC.staleness_of, but also accepts the error ChromeDriver sometimes returns instead of a stale
    element reference while the old document is being torn down ("Node with given id does not belong to
    the document"); any other error still propagates."""
    def check(driver):
        try:
            old_page.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e):
                return True
            raise
    return check


def read_export(db: Path, out: Path) -> list[dict[str, str]]:
    study.export_csv(db, out)
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == study.EXPORT_COLUMNS
        return list(reader)


def test_participant_corrects_an_out_of_range_answer(live_study, new_browser, tmp_path):
    base_url, db = live_study
    driver = new_browser()
    start(driver, base_url, "solo-1")
    accepted = []
    first_id, progress = shown_item(driver)
    assert progress == "Item 1 of 3"
    answer(driver, "150")
    error = driver.find_element(By.ID, "error").text
    assert "out of range" in error
    assert shown_item(driver) == (first_id, "Item 1 of 3")
    assert driver.find_element(By.ID, "rating").get_attribute("value") == "150"
    assert read_export(db, tmp_path / "mid.csv") == []
    for percent in ("42", "55", "70"):
        item_id, _ = shown_item(driver)
        is_mc = bool(driver.find_elements(By.ID, "options"))
        own = "C" if is_mc else "my guess"
        answer(driver, percent, own)
        accepted.append((item_id, float(percent) / 100, own))
    assert driver.find_element(By.ID, "done").text == "Thank you!"
    assert accepted[0][0] == first_id and len({a[0] for a in accepted}) == 3
    rows = read_export(db, tmp_path / "ratings.csv")
    assert [(r["item_id"], float(r["rating"]), r["own_answer"]) for r in rows] == accepted
    assert {(r["participant_id"], r["condition"], r["is_attention_check"], r["attention_passed"]) for r in rows} == {
        ("solo-1", "default", "0", "")
    }
    assert all(r["style"] == "default" for r in rows)


def test_two_participants_interleave_in_two_browsers(live_study, new_browser, tmp_path):
    base_url, db = live_study
    drivers = {"pair-a": new_browser(), "pair-b": new_browser()}
    for code, driver in drivers.items():
        start(driver, base_url, code)
    accepted: dict[str, list[tuple[str, float]]] = {code: [] for code in drivers}
    for step in range(3):
        # Interleave: a, b, a, b, ... and let the two browsers submit at the same moment once.
        if step == 1:
            pending = {code: shown_item(driver)[0] for code, driver in drivers.items()}
            threads = [threading.Thread(target=answer, args=(driver, str(10 + 40 * k + step)))
                       for k, driver in enumerate(drivers.values())]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=WAIT_S * 2)
            assert not any(t.is_alive() for t in threads)
            for k, code in enumerate(drivers):
                accepted[code].append((pending[code], (10 + 40 * k + step) / 100))
            continue
        for k, (code, driver) in enumerate(drivers.items()):
            item_id, progress = shown_item(driver)
            assert progress == f"Item {step + 1} of 3"
            answer(driver, str(10 + 40 * k + step))
            accepted[code].append((item_id, (10 + 40 * k + step) / 100))
    for driver in drivers.values():
        assert driver.find_element(By.ID, "done").text == "Thank you!"
    rows = read_export(db, tmp_path / "ratings.csv")
    assert len(rows) == 6
    for code in drivers:
        mine = [r for r in rows if r["participant_id"] == code]
        assert [(r["item_id"], float(r["rating"])) for r in mine] == accepted[code]
        assert len({r["condition"] for r in mine}) == 1
    conditions = {r["participant_id"]: r["condition"] for r in rows}
    assert sorted(conditions.values()) == ["default", "selected"]
    selected = next(code for code, c in conditions.items() if c == "selected")
    assert {r["style"] for r in rows if r["participant_id"] == selected} == {"sure_long"}


def test_the_end_page_returns_the_participant_to_the_platform(new_browser, tmp_path):
    """Under the app's content security policy the end page shows the completion code and its refresh
    takes the browser to the completion address (here a stand-in platform on another port)."""
    def platform(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<p id='platform'>submission complete</p>"]

    servers = [make_server("127.0.0.1", 0, platform, threaded=True)]
    completion = f"http://127.0.0.1:{servers[0].server_port}/submissions/complete?cc=C1A2B3"
    app = study.create_app(write_items(tmp_path / "items.jsonl"), tmp_path / "study.db", attention_checks=0,
                           n_items_per_participant=1, completion_code="C1A2B3", completion_url=completion)
    servers.append(make_server("127.0.0.1", 0, app, threaded=True))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        driver = new_browser()
        start(driver, f"http://127.0.0.1:{servers[1].server_port}", "returner")
        answer(driver, "60")
        assert driver.find_element(By.ID, "completion-code").text == "C1A2B3"
        WebDriverWait(driver, WAIT_S).until(EC.presence_of_element_located((By.ID, "platform")))
        assert driver.current_url == completion
    finally:
        for s in servers:
            s.shutdown()
        for t in threads:
            t.join(timeout=10)
