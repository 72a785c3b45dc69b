"""The `metacog` command line end to end on the tiny random model (configs/tiny.py), as subprocesses.

sample -> targets on procedural sets (20 train + 12 test arithmetic questions, 12 comparison questions);
sample -> targets -> train -> eval -> report with real sets from ../shared/data; sampling killed with
SIGKILL and resumed; `metacog demo` run twice (every stage of every condition, then a second run that
skips them all) and its single-task model exported; and bad input that must fail with a message naming
what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.py"  # relative to REPO, the subprocesses' working directory
N_TRAIN, N_TEST = 20, 12  # configs/tiny.py's data.n_train, data.n_test
K = 3  # configs/tiny.py's sample.k
SINGLE_METRICS = {"accuracy", "mean_confidence", "ece", "ace", "brier", "auroc", "aurc"}
RAW_PAIRWISE_METRICS = {"auc_c", "auc_c_auroc", "auc_a", "auc_a_auroc", "q1_choice_rate"}
PAIRWISE_METRICS = RAW_PAIRWISE_METRICS | {"bt_auroc", "bt_spearman_consistency"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

from conftest import read_strict_json


def _command() -> list[str]:
    script = Path(sys.executable).parent / "metacog"  # the installed console script
    return [str(script)] if script.exists() else [sys.executable, "-m", "metacog_jax.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METACOG_") or k == "METACOG_COMPILATION_CACHE"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def metacog(*args: str, timeout: int = 300, ok: bool = True) -> subprocess.CompletedProcess:
    """Run `metacog ARGS` in the repository root; with `ok`, fail the test unless it exits 0."""
    proc = subprocess.run(_command() + list(args), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"metacog {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# -- output checks ------------------------------------------------------------------------------------------
def check_samples(data: Path, counts: dict[str, int]) -> None:
    """samples/<d>.jsonl and questions/<d>.jsonl hold `counts[d]` records with the same unique ids."""
    for domain, n in counts.items():
        lines = read_jsonl(data / "samples" / f"{domain}.jsonl")
        questions = read_jsonl(data / "questions" / f"{domain}.jsonl")
        assert len(lines) == n, f"{domain}: {len(lines)} sample lines, expected {n}"
        ids = [r["id"] for r in lines]
        assert len(set(ids)) == n and set(ids) == {q["id"] for q in questions}, domain
        for r in lines:
            assert r["domain"] == domain and r["split"] in ("train", "test") and r["k"] == K
            assert len(r["samples"]) == K and all(isinstance(s["text"], str) for s in r["samples"])
            assert r["consistency"] == pytest.approx(r["modal_count"] / K)
            assert isinstance(r["greedy"]["text"], str)


def check_targets(data: Path) -> None:
    single = read_jsonl(data / "targets" / "single.jsonl")
    pairwise = read_jsonl(data / "targets" / "pairwise.jsonl")
    summary = read_strict_json(data / "targets" / "summary.json")
    assert summary["mode"] == "binned_accuracy"
    assert single and any(r["split"] == "train" for r in single)
    question_ids = {r["id"] for p in (data / "questions").glob("*.jsonl") for r in read_jsonl(p)}
    for r in single:
        assert r["question_id"] in question_ids and 0.0 <= r["target"] <= 1.0, r
    for r in pairwise:
        assert {r["q1"], r["q2"]} <= question_ids and r["q1"] != r["q2"] and r["choice"] in ("Q1", "Q2"), r


def check_interval(name: str, value: dict) -> None:
    assert set(value) >= {"estimate", "low", "high"}, name
    if value["estimate"] is None:  # undefined (e.g. AUROC when every answer is wrong): so are the bounds
        assert value["low"] is None and value["high"] is None, name
        return
    assert all(math.isfinite(value[k]) for k in ("estimate", "low", "high")), (name, value)
    assert value["low"] <= value["high"], (name, value)
    lowest = -1 if name.endswith("spearman_consistency") else 0  # a rank correlation; the rest live in [0, 1]
    assert lowest - 1e-6 <= value["estimate"] <= 1 + 1e-6, (name, value)


def check_eval(run: Path, roles: dict[str, str], n_items: dict[str, int]) -> dict:
    """eval/metrics.json: each dataset with its role and every single-task and pairwise metric."""
    metrics = read_strict_json(run / "eval" / "metrics.json")
    assert "ECE" in metrics["ece_definition"]
    assert set(metrics["datasets"]) == set(roles)
    for ds, entry in metrics["datasets"].items():
        assert entry["role"] == roles[ds] and entry["n"] == n_items[ds], (ds, entry["role"], entry["n"])
        for block, names in (("single", SINGLE_METRICS), ("single_argmax", SINGLE_METRICS),
                             ("pairwise", PAIRWISE_METRICS), ("pairwise_raw", RAW_PAIRWISE_METRICS)):
            assert set(entry[block]["metrics"]) == names, (ds, block)
            for name, value in entry[block]["metrics"].items():
                check_interval(f"{ds}.{block}.{name}", value)
        assert entry["pairwise"]["n"] > 0, ds
        items = read_jsonl(run / "eval" / f"{ds}.jsonl")
        assert sum(r["task"] == "single" for r in items) == n_items[ds]
        assert all(0.0 <= r["expected"] <= 1.0 for r in items if r["task"] == "single")
    return metrics


def check_report(out: Path, stdout: str, conditions: list[str], datasets: list[str]) -> None:
    md = (out / "report.md").read_text()
    assert "## Main results" in md and "(task transfer)" in md and "## Answer accuracy" in md
    header = next(line for line in md.splitlines() if line.startswith("| condition |"))
    for ds in datasets:
        for metric in ("ECE", "AUC", "AUC_c", "AUC_a"):
            assert f"{ds} {metric}" in md, (ds, metric)
    assert "arithmetic ECE" in header
    for c in conditions:
        assert f"| {c} |" in md, c
    # stdout carries the same table: one line per (dataset, condition) with a number in the ECE column
    for ds in datasets:
        for c in conditions:
            assert re.search(rf"{re.escape(ds)}\s+{re.escape(c)}\s+\d\.\d{{3}} \[", stdout), (ds, c, stdout)
    figures = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == len(conditions) * len(datasets)
    for rel in figures:
        png = (out / rel).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 1000, rel
    assert read_strict_json(out / "report.json")["conditions"] == conditions


# -- the procedural pipeline --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    """`metacog sample` then `metacog targets` into one data directory (tiny config, procedural sets)."""
    data = tmp_path_factory.mktemp("cli") / "data"
    out = metacog("sample", f"--config={TINY}", f"--workdir={data}").stdout
    assert f"arithmetic: {data}/samples/arithmetic.jsonl: {N_TRAIN + N_TEST} questions" in out, out
    metacog("targets", f"--config={TINY}", f"--workdir={data}")
    return data


def test_sample_and_targets_write_well_formed_files(data_run):
    check_samples(data_run, {"arithmetic": N_TRAIN + N_TEST, "comparison": N_TEST})
    splits = [r["split"] for r in read_jsonl(data_run / "samples" / "arithmetic.jsonl")]
    assert splits.count("train") == N_TRAIN and splits.count("test") == N_TEST
    assert {r["split"] for r in read_jsonl(data_run / "samples" / "comparison.jsonl")} == {"test"}
    check_targets(data_run)
    config = json.loads((data_run / "config.sample.json").read_text())
    assert config["model"]["name"] == "random" and config["data"]["domains"] == ["arithmetic"]


@pytest.mark.slow
def test_pipeline_with_real_sets_from_data_dir(shared_data, tmp_path):
    """20 train + 10 test questions of arithmetic and GSM8K, 10 of comparison and MedQA."""
    spec = f"--config={TINY}:task=single,domains=arithmetic+gsm8k,ood=comparison+medqa,data_dir={shared_data}"
    sizes = ["--config.data.n_train=20", "--config.data.n_test=10"]
    run = tmp_path / "run"
    for stage in ("sample", "targets", "train", "eval"):
        out = metacog(stage, spec, *sizes, f"--workdir={run}", timeout=400).stdout
        if stage == "train":
            summary = json.loads(out[out.index("{"):])
            assert summary["end_step"] == 4 and summary["lora_paths"] > 0
            assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == 4
    check_samples(run, {"arithmetic": 30, "gsm8k": 30, "comparison": 10, "medqa": 10})
    gsm = read_jsonl(run / "questions" / "gsm8k.jsonl")
    assert all(q["kind"] == "numeric" and q["answers"] for q in gsm)
    medqa = read_jsonl(run / "questions" / "medqa.jsonl")
    assert all(q["kind"] == "multiple_choice" and len(q["options"]) >= 4 for q in medqa)
    check_targets(run)
    assert {r["domain"] for r in read_jsonl(run / "targets" / "single.jsonl")} == {"arithmetic", "gsm8k"}
    roles = {"arithmetic": "in_domain", "gsm8k": "in_domain", "comparison": "out_of_domain",
             "medqa": "out_of_domain"}
    check_eval(run, roles, {ds: 10 for ds in roles})
    out = metacog("report", f"--run=S={run}", f"--out={tmp_path / 'report'}").stdout
    check_report(tmp_path / "report", out, ["S"], list(roles))


# -- resuming ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_resumes_after_kill9(tmp_path):
    # 112 questions in 14 chunks of 8: long enough to kill after the first chunk lands.
    args = [f"--config={TINY}:ood=", "--config.data.n_train=100"]
    total = 100 + N_TEST
    reference = tmp_path / "uninterrupted"
    metacog("sample", *args, f"--workdir={reference}")

    killed = tmp_path / "killed"
    samples = killed / "samples" / "arithmetic.jsonl"
    proc = subprocess.Popen(_command() + ["sample", *args, f"--workdir={killed}"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if samples.exists() and b"\n" in samples.read_bytes():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"sampling ended (exit {proc.returncode}) before it was killed"
    done = samples.read_bytes().count(b"\n")
    assert 1 <= done < total, f"{done} of {total} lines written before the kill"

    out = metacog("sample", *args, f"--workdir={killed}").stdout
    assert f"{total} questions ({total - done} sampled now, {done} resumed)" in out, out
    lines = samples.read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert len(lines) == total and len(set(ids)) == total
    as_set = lambda path: {json.dumps(json.loads(l), sort_keys=True) for l in path.read_text().splitlines()}
    assert as_set(samples) == as_set(reference / "samples" / "arithmetic.jsonl")
    assert as_set(killed / "questions" / "arithmetic.jsonl") == as_set(reference / "questions" / "arithmetic.jsonl")


@pytest.mark.slow
def test_demo_runs_then_skips_finished_stages(tmp_path):
    work = tmp_path / "demo"
    first = metacog("demo", f"--config={TINY}", f"--workdir={work}", timeout=600).stdout
    # The demo skips C and C+S when the random model's samples give no training pair (every training
    # question in one consistency bin); which happens is fixed by the seed, so check against the targets.
    has_pairs = any(r["split"] == "train" for r in read_jsonl(work / "data" / "targets" / "pairwise.jsonl"))
    conditions = ["base", "S", "C", "C+S"] if has_pairs else ["base", "S"]
    stages = ["sample", "targets", "eval base", "train S", "eval S"]
    if has_pairs:
        stages += ["train C", "eval C", "train C+S", "eval C+S"]
    else:
        for name in ("C", "C+S"):
            assert f"[demo] {name}: skipped, no training pairs" in first, (name, first)
    for stage in stages:
        assert f"[demo] {stage} ..." in first, (stage, first)
    datasets = ["arithmetic", "comparison"]
    check_report(work / "report", first, conditions, datasets)
    tasks = {"S": "single", "C": "pairwise", "C+S": "multitask"}
    for name in conditions[1:]:
        assert (work / tasks[name] / "checkpoints" / "4").is_dir(), name
    check_samples(work / "data", {"arithmetic": N_TRAIN + N_TEST, "comparison": N_TEST})
    check_targets(work / "data")
    rows = read_jsonl(work / "single" / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss_single"] > 0 and r["loss_pairwise"] == 0 for r in rows)
    roles = {"arithmetic": "in_domain", "comparison": "out_of_domain"}
    for run in ["base"] + [tasks[name] for name in conditions[1:]]:
        check_eval(work / run, roles, {"arithmetic": N_TEST, "comparison": N_TEST})
    report_md = (work / "report" / "report.md").read_text()

    second = metacog("demo", f"--config={TINY}", f"--workdir={work}", timeout=300).stdout
    for stage in stages:
        assert re.search(rf"\[demo\] {re.escape(stage)}: done earlier \(.+\), skipped", second), (stage, second)
        assert f"[demo] {stage} ..." not in second, stage
    assert (work / "report" / "report.md").read_text() == report_md
    check_report(work / "report", second, conditions, datasets)

    # The trained single-task model as a Hugging Face directory (base + merged LoRA adapters).
    hf = tmp_path / "hf"
    out = metacog("export", f"--config={TINY}:task=single", f"--workdir={work / 'single'}", f"--out={hf}").stdout
    assert str(hf) in out
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (hf / "model.safetensors").stat().st_size > 1e6


# -- flags ----------------------------------------------------------------------------------------------------
def test_help_lists_the_commands_and_each_command_only_its_flags():
    top = metacog("--help").stdout
    for command in ("sample", "targets", "train", "eval", "report", "export", "explain", "gap", "study", "demo"):
        assert command in top, command
    train = metacog("train", "--help").stdout
    for flag in ("--config", "--workdir", "--data_workdir", "--verbose"):
        assert flag in train, flag
    for flag in ("--port", "--items", "--db", "--run", "--out", "--data_dir"):
        assert flag not in train, flag
    report = metacog("report", "--help").stdout
    assert "--run" in report and "--out" in report and "--config" not in report and "--workdir" not in report
    serve = metacog("study", "serve", "--help").stdout
    for flag in ("--items", "--db", "--host", "--port"):
        assert flag in serve, flag
    assert "--config" not in serve and "--workdir" not in serve
    assert "configs/demo.py" in metacog("demo", "--help").stdout  # the default config


def test_commands_without_a_config_reject_config_flags():
    proc = metacog("report", "--run=a=b", "--config=configs/tiny.py", ok=False)
    assert proc.returncode == 2
    _fails(proc, "--config=configs/tiny.py", "takes no config")
    proc = metacog("train", f"--config={TINY}", "--port=1", ok=False)
    assert proc.returncode == 2
    _fails(proc, "unrecognized arguments: --port=1")


# -- bad input ----------------------------------------------------------------------------------------------
def _fails(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, f"exited 0:\n{proc.stdout[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in:\n{proc.stderr[-3000:]}"


# In this process (cli.main, as the console script calls it): a process per case would spend seconds on
# imports to print one line; the subprocess tests above check the script's own exit codes and output.
def _main_fails(capsys, args: list[str], *needles: str) -> None:
    from metacog_jax import cli

    code = cli.main(args)
    err = capsys.readouterr().err
    assert code not in (0, None), f"exited {code}:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err[-3000:]}"


def test_unknown_config_key_names_the_key(tmp_path, capsys):
    _main_fails(capsys, ["train", f"--config={REPO / TINY}", "--config.train.lrr=1", f"--workdir={tmp_path}"],
                "train.lrr", "did you mean train.lr")
    assert not list(tmp_path.iterdir())  # nothing was written


def test_missing_config_file_names_the_path(tmp_path, capsys):
    _main_fails(capsys, ["sample", f"--config={REPO / 'configs/tinyy.py'}", f"--workdir={tmp_path}"],
                "configs/tinyy.py", "does not exist")


def test_eval_before_train_names_the_workdir(data_run, tmp_path, capsys):
    run = tmp_path / "S"
    _main_fails(capsys, ["eval", f"--config={REPO / TINY}:task=single", f"--workdir={run}",
                         f"--data_workdir={data_run}"], f"no checkpoint in {run / 'checkpoints'}", "metacog train")


def test_eval_before_sample_names_the_data_dir(tmp_path, capsys):
    _main_fails(capsys, ["eval", f"--config={REPO / TINY}:task=base", f"--workdir={tmp_path}"],
                str(tmp_path / "samples" / "arithmetic.jsonl"), "sample stage")


@pytest.mark.parametrize("domains", ["arithmetic+nosuch", "arithmetic+"])
def test_unknown_or_empty_domain_name(domains, tmp_path, capsys):
    bad = domains.split("+")[1]
    _main_fails(capsys, ["sample", f"--config={REPO / TINY}:domains={domains}", f"--workdir={tmp_path}"],
                f"unknown domain {bad!r}", "known domains: arithmetic")
    assert not (tmp_path / "samples" / "arithmetic.jsonl").exists()  # failed before sampling anything


def test_empty_domains_override_is_a_clear_error(tmp_path, capsys):
    _main_fails(capsys, ["sample", f"--config={REPO / TINY}", "--config.data.domains=", f"--workdir={tmp_path}"],
                "data.domains")


def test_no_in_domain_set_is_a_clear_error(tmp_path, capsys):
    _main_fails(capsys, ["targets", f"--config={REPO / TINY}:domains=", f"--workdir={tmp_path}"], "data.domains")


def test_training_stopped_by_sigterm_is_not_taken_for_a_finished_stage(monkeypatch, tmp_path):
    """The trainer saves and returns on SIGTERM; the stage must not pass that off as a trained model
    (the demo would evaluate it and mark training done), and the CLI exits 143 so a rerun resumes."""
    from metacog_jax import cli, config_utils, demo, pipeline
    from metacog_jax.models import build
    from metacog_jax.train import trainer

    class Builder:
        stats = {"single": 1}

    c = config_utils.load_config(TINY)
    steps = c.train.steps
    monkeypatch.setattr(pipeline, "make_batches", lambda *a: (Builder(), None))
    monkeypatch.setattr(build, "tokenizer_for_config", lambda config: None)
    end = {"step": 2}
    monkeypatch.setattr(trainer, "train", lambda *a, **k: {"preempted": True, "end_step": end["step"]})
    with pytest.raises(pipeline.TrainingPreempted, match=f"step 2 of {steps}.*run the command again"):
        pipeline.stage_train(c, tmp_path / "run", tmp_path)
    marker = tmp_path / "run" / "train" / "DONE"
    with pytest.raises(pipeline.TrainingPreempted):
        demo._stage("train S", marker, lambda: pipeline.stage_train(c, tmp_path / "run", tmp_path))
    assert not marker.exists()
    end["step"] = steps  # a signal after the last step: the model is trained
    assert pipeline.stage_train(c, tmp_path / "run", tmp_path)["end_step"] == steps

    def preempted(*a):
        raise pipeline.TrainingPreempted("stopped")

    monkeypatch.setattr(cli, "_run", preempted)
    assert cli.main(["train", f"--config={REPO / TINY}", f"--workdir={tmp_path}"]) == 143


def test_tune_names_a_bad_temperature_list(tmp_path, capsys):
    from metacog_jax import cli

    assert cli.main(["tune", f"--config={REPO / TINY}", f"--workdir={tmp_path}", "--temperatures=hot,0.7"]) == 2
    assert "--temperatures='hot,0.7': expected numbers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
