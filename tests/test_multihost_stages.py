"""sample, grade, eval and explain on two processes joined by jax.distributed (gloo) write what one process
writes, and resume with nothing redone.

One launch of tests/stages_worker.py as a single process makes the reference workdir; one launch of two
processes (2 fake CPU devices each) then, in a second workdir:
  * resumes sampling from the file a killed one-process run leaves (5 complete lines and a torn sixth);
  * grades again with another rule, evaluates, is stopped part-way through eval (after the first
    dataset is written) and evaluates again, which scores only the second dataset;
  * builds the explain items, is stopped part-way (after its first round of explanations) and builds them
    again, which generates only the rest;
  * samples the in-domain questions again with the model sharded over all 4 devices of both processes
    (one global mesh), and scores a few prefixes with it.
Every file is then compared with the one-process file: byte for byte, except the wall-clock fields.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "stages_worker.py"
# Wall-clock fields (and absolute paths) are the only things allowed to differ between the two workdirs, and
# explain's count of results read from its cache (the second workdir's explain run resumes a stopped one).
_VOLATILE = {"seconds", "created_at", "path", "from_cache"}


def _launch(workdir: Path, spec: dict, processes: int, cache: str, timeout: float = 600) -> list[list[dict]]:
    """Run the worker as `processes` processes; returns each process's RESULT lines."""
    env = dict(os.environ)
    env.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(2),
                "METACOG_COMPILATION_CACHE": str(cache),
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    for key in ("METACOG_COORDINATOR", "METACOG_NUM_PROCESSES", "METACOG_PROCESS_ID", "METACOG_DISTRIBUTED"):
        env.pop(key, None)
    if processes > 1:
        portpicker = pytest.importorskip("portpicker", reason="portpicker picks a free coordinator port")
        env.update({"METACOG_COORDINATOR": f"127.0.0.1:{portpicker.pick_unused_port()}",
                    "METACOG_NUM_PROCESSES": str(processes), "METACOG_INIT_TIMEOUT": "120"})
    procs = []
    try:
        for process_id in range(processes):
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), str(workdir), json.dumps(spec)], cwd=REPO,
                env=dict(env, METACOG_PROCESS_ID=str(process_id)), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
        results.append([json.loads(line[len("RESULT "):]) for line in output.splitlines()
                        if line.startswith("RESULT ")])
    return results


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """The SmolLM2 tokenizer as a Hugging Face directory: each worker loads it in a second, not ten."""
    path = tmp_path_factory.mktemp("tokenizer")
    smol_tokenizer.save_pretrained(path)
    (path / "config.json").write_text('{"model_type": "llama"}')  # what marks a model directory
    return path


@pytest.mark.slow
def test_two_processes_write_what_one_writes_and_resume(tmp_path, tokenizer_dir):
    cache = os.environ.get("METACOG_COMPILATION_CACHE") or str(tmp_path / "xla")  # the run's (conftest)
    one, two = tmp_path / "one", tmp_path / "two"
    [reference] = _launch(one, {"stages": ["sample", "grade", "eval", "explain"], "tokenizer": str(tokenizer_dir)},
                          1, cache)
    ref = {r["stage"]: r for r in reference}

    # What a one-process sampling run killed mid-write leaves: 5 complete lines and part of the sixth.
    lines = (one / "samples" / "arithmetic.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 16
    (two / "samples").mkdir(parents=True)
    (two / "samples" / "arithmetic.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:40])

    stages = ["sample", "grade", "eval", "eval", "explain", "explain", "sample_global"]
    results = _launch(two, {"stages": stages, "stop_at": ["dataset", 2], "stop_explain_at": 2,
                            "tokenizer": str(tokenizer_dir)}, 2, cache)
    for process, got in enumerate(results):
        assert [r["stage"] for r in got] == stages
        assert all(r["process"] == process for r in got)
        sample, grade, stopped, evaluated, explain_stopped, explain, global_sample = got
        # Resumed: the 5 complete lines kept, the torn one sampled again with the rest; 11 + 8 questions in
        # rounds of 2 chunks of 4 (one chunk per process): 2 + 1 sampler calls.
        assert sample["summaries"] == {"arithmetic": "16 questions (11 sampled now, 5 resumed)",
                                       "comparison": "8 questions (8 sampled now, 0 resumed)"}
        assert sample["generate_calls"] == 3 and sample["process_count"] == 2
        assert grade["domains"] == ref["grade"]["domains"]
        # Stopped at the second dataset; run again, eval reuses the first and scores only the second.
        assert stopped == {"stage": "eval", "process": process, "stopped": True}
        assert evaluated["datasets_scored"] == 1 and evaluated["ece"] == ref["eval"]["ece"]
        # Explain: 2 items x 10 styles in 5 batches of 4: one sampler call per batch in one process, one per
        # round of 2 batches in two. Stopped as its second round started, run again: the pool's confidences
        # and the first round's 2 batches come from explain/cache.jsonl, the other 3 batches take 2 rounds.
        assert ref["explain"]["generate_calls"] == 5 and ref["explain"]["from_cache"] == {
            "confidences": 0, "explanations": 0}
        assert explain_stopped == {"stage": "explain", "process": process, "stopped": True}
        assert explain["items"] == ref["explain"]["items"] == 2
        assert explain["generate_calls"] == 2 and explain["from_cache"] == {"confidences": 4, "explanations": 8}
        assert global_sample["summaries"] == {"arithmetic": "16 questions (16 sampled now, 0 resumed)"}
        assert global_sample["scorer_max_abs_diff"] < 1e-4  # the scorer on the sharded model, against a replica

    ref_files, got_files = _files(one), _files(two)
    assert sorted(set(got_files) - {f for f in got_files if f.startswith("global/")}) == sorted(ref_files)
    for name, path in ref_files.items():
        ours = got_files[name]
        if name.endswith(".jsonl"):
            assert ours.read_bytes() == path.read_bytes(), name
        else:  # JSON with a wall-clock field or an absolute path
            ours_json, reference_json = json.loads(ours.read_text()), json.loads(path.read_text())
            assert _without_volatile(ours_json) == _without_volatile(reference_json), name
    # The model sharded over both processes' devices samples the same lines (graded with the same rule; the
    # same batches: a sample drawn by inverse CDF over 49k tokens may move with the padded length).
    for name in ("samples/arithmetic.jsonl", "questions/arithmetic.jsonl"):
        assert got_files["global/" + name].read_bytes() == ref_files[name].read_bytes(), name
