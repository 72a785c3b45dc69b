"""Simulated participants: the population values of the gap statistics, their recovery by `gap` from a
large offline simulation, a negative control, and 20 concurrent participants through the real app over
HTTP on 127.0.0.1 with nothing lost, duplicated or misattributed."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from metacog_jax.perception import gap, simulate

flask = pytest.importorskip("flask", reason="the study app needs flask (pip install 'flask>=3')")

from metacog_jax.perception import study  # noqa: E402


def make_items(n=40, seed=1):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        c = float(rng.uniform(0.1, 0.9))
        items.append({"item_id": f"i{i}", "question": f"Question {i}?", "options": [], "model_answer": f"a{i}",
                      "correct": bool(rng.uniform() < c), "model_confidence": c,
                      "explanations": {"default": f"Because {i}.", "sure_long": f"I am sure about {i}.",
                                       "not_sure_long": f"I am not sure about {i}."},
                      "selected_style": "sure_long" if c > 0.6 else "not_sure_long"})
    return items


def test_population_values_match_a_large_simulation():
    items = make_items()
    expected = simulate.expected_gap(items, "default", simulate.DEFAULT_BIAS, 0.1)
    rows = simulate.simulate_offline(items, ["default"], 1000, noise_sd=0.1, seed=0)
    got = gap.calibration_gap(items, rows, n_resamples=2)["metrics"]
    for name, value in expected.items():
        assert got[name]["estimate"] == pytest.approx(value, abs=0.005), name


@pytest.mark.parametrize("bias, sd", [(simulate.DEFAULT_BIAS, 0.1), (simulate.NO_STYLE_EFFECT, 0.03)])
def test_the_recovered_interval_holds_the_known_gap(bias, sd):
    items = make_items()
    rows = simulate.simulate_offline(items, ["default"], 60, items_per_participant=20, bias=bias, noise_sd=sd,
                                     seed=3)
    got = gap.calibration_gap(items, rows, n_resamples=500)["metrics"]
    expected = simulate.expected_gap(items, "default", bias, sd)
    for name in ("calibration_gap", "discrimination_gap", "human_ece"):
        assert got[name]["low"] <= expected[name] <= got[name]["high"], (name, expected[name], got[name])
    if bias is simulate.NO_STYLE_EFFECT:  # negative control: people rate like the model, the gap is ~0
        assert abs(expected["calibration_gap"]) < 0.03
        assert got["calibration_gap"]["low"] <= 0.0 <= got["calibration_gap"]["high"]


def test_bias_and_style_checks():
    with pytest.raises(ValueError, match="missing \\['default'\\]"):
        simulate.check_bias({"not_sure": 0, "somewhat_sure": 0, "sure": 0})
    with pytest.raises(ValueError, match="unknown style 'loud'"):
        simulate.certainty_of("loud")
    assert simulate.certainty_of("somewhat_sure_uncertainty_only") == "somewhat_sure"


def test_twenty_concurrent_simulated_participants_over_http(tmp_path):
    from werkzeug.serving import make_server

    from metacog_jax import cli

    items = make_items(12)
    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in items))
    db = tmp_path / "study.sqlite"
    app = study.create_app(items_path, db, conditions=("default", "selected", "not_sure_long"),
                           n_items_per_participant=4, attention_checks=1)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "simulated.csv"
        assert cli.main(["study", "simulate", f"--url=http://127.0.0.1:{server.server_port}",
                         f"--items={items_path}", "--n=20", "--concurrency=20", f"--out={out}"]) == 0
    finally:
        server.shutdown()
        thread.join(timeout=10)
    with out.open(newline="") as f:
        submitted = list(csv.DictReader(f))
    assert len(submitted) == 20 * 5  # 4 items + 1 attention check each
    export = tmp_path / "ratings.csv"
    study.export_csv(db, export)
    rows = gap.read_ratings_csv(export)
    key = lambda pid, item, rating: (pid, item, round(float(rating), 6))  # noqa: E731
    # Nothing lost, duplicated or attributed to someone else: the export is exactly what was sent.
    assert sorted(key(r["participant_id"], r["item_id"], r["rating"]) for r in rows) == sorted(
        key(s["participant_id"], s["item_id"], float(s["rating_percent"]) / 100) for s in submitted)
    assert len({(r["participant_id"], r["item_id"]) for r in rows}) == len(rows)
    # Each participant saw their condition's style, and the simulator read it off the page.
    shown = {(s["participant_id"], s["item_id"]): s["style"] for s in submitted}
    for r in rows:
        assert r["style"] == shown[(r["participant_id"], r["item_id"])]
    assert all(r["attention_passed"] == "1" for r in rows if r["is_attention_check"])
    counts = {c: len({r["participant_id"] for r in rows if r["condition"] == c}) for c in ("default", "selected",
                                                                                          "not_sure_long")}
    assert sorted(counts.values()) == [6, 7, 7]  # balanced
    # ... and `gap` reads it (the full report on such data: test_gap.py).
    assert gap.calibration_gap(items, rows, n_resamples=10)["n_ratings"] == 20 * 4


def test_simulate_names_an_unreachable_study(tmp_path, capsys):
    import socket

    from metacog_jax import cli

    items_path = tmp_path / "items.jsonl"
    items_path.write_text("".join(json.dumps(i) + "\n" for i in make_items(3)))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["study", "simulate", f"--url=http://127.0.0.1:{port}", f"--items={items_path}", "--n=2",
                     f"--out={tmp_path / 'sim.csv'}"]) == 2
    assert f"cannot reach the study at http://127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "sim.csv").exists()
