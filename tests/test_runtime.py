"""Tests for metacog_jax.runtime: process start-up (multi-host plan, compilation cache, host allocator).

Everything runs in this process except the allocator probe, which needs a fresh one. The two-process
join itself is tested in tests/test_sharding.py (test_two_processes_agree_on_global_mesh), which needs
fake devices.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metacog_jax import runtime

REPO = Path(__file__).resolve().parents[1]


# --- distributed plan (pure) -----------------------------------------------------


def test_distributed_plan_from_env():
    assert runtime.distributed_plan({}) is None
    assert runtime.distributed_plan({"METACOG_NUM_PROCESSES": "1"}) is None
    plan = runtime.distributed_plan({"METACOG_NUM_PROCESSES": "2", "METACOG_COORDINATOR": "h0:1234",
                                     "METACOG_PROCESS_ID": "1"})
    assert plan["coordinator_address"] == "h0:1234"
    assert plan["num_processes"] == 2 and plan["process_id"] == 1
    assert runtime.distributed_plan({"METACOG_DISTRIBUTED": "auto"}) == {"reason": "METACOG_DISTRIBUTED=auto"}
    assert runtime.distributed_plan({"TPU_WORKER_HOSTNAMES": "a,b"}) is not None
    assert runtime.distributed_plan({"TPU_WORKER_HOSTNAMES": "a"}) is None
    assert runtime.distributed_plan({"MEGASCALE_COORDINATOR_ADDRESS": "x:1"}) is not None
    assert runtime.distributed_plan({"METACOG_DISTRIBUTED": "0", "TPU_WORKER_HOSTNAMES": "a,b"}) is None
    with pytest.raises(ValueError, match="METACOG_PROCESS_ID not set"):
        runtime.distributed_plan({"METACOG_NUM_PROCESSES": "2", "METACOG_COORDINATOR": "h0:1"})


def test_maybe_initialize_distributed_single_process_is_noop():
    assert runtime.maybe_initialize_distributed({}) is False


# --- compilation cache -----------------------------------------------------------


def test_enable_compilation_cache(tmp_path, monkeypatch):
    import jax

    from metacog_jax.runtime import enable_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("METACOG_COMPILATION_CACHE", "off")
        assert enable_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == before
        monkeypatch.setenv("METACOG_COMPILATION_CACHE", str(tmp_path / "env_cache"))
        assert enable_compilation_cache() == str(tmp_path / "env_cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env_cache")
        assert (tmp_path / "env_cache").is_dir()
        explicit = enable_compilation_cache(str(tmp_path / "explicit"))
        assert explicit == str(tmp_path / "explicit") == jax.config.jax_compilation_cache_dir
        (tmp_path / "a_file").write_text("")
        with pytest.raises(ValueError, match="a_file.*cannot be created.*METACOG_COMPILATION_CACHE"):
            enable_compilation_cache(str(tmp_path / "a_file" / "cache"))
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


# --- host allocator (subprocess) -------------------------------------------------

HOST_MALLOC_PROBE = """
import ctypes, resource, sys
from metacog_jax.runtime import tune_host_allocator
applied = tune_host_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):  # allocate, touch and free a 64 MiB block, as a step's temporaries are
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(ctypes.c_void_p(p))
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_tune_host_allocator_reuses_freed_memory():
    """With the tuning, a freed 64 MiB block is reused (its pages fault in once); without it, glibc
    unmaps it and every allocation faults all 16k pages in again."""
    def probe(setting):
        env = dict(os.environ, METACOG_HOST_MALLOC=setting)
        out = subprocess.run([sys.executable, "-c", HOST_MALLOC_PROBE], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[0] == "True", int(out[1])

    applied, tuned = probe("on")
    not_applied, default = probe("off")
    assert applied and not not_applied
    pages = (64 << 20) // 4096
    assert default >= 5 * pages  # every round faults its pages in
    assert tuned < 2 * pages  # only the first round does


# --- start_process ------------------------------------------------------------------


@pytest.fixture
def fake_steps(monkeypatch):
    """Replace the three start-up steps with recorders and forget any earlier start of this process."""
    calls: list[str] = []
    monkeypatch.setattr(runtime, "_started", None)
    monkeypatch.setattr(runtime, "tune_host_allocator", lambda: calls.append("allocator") or True)
    monkeypatch.setattr(runtime, "enable_compilation_cache", lambda: calls.append("cache") or "/cache")
    monkeypatch.setattr(runtime, "maybe_initialize_distributed", lambda: calls.append("distributed") or False)
    return calls


def test_start_process_runs_each_step_once_in_order(fake_steps):
    first = runtime.start_process()
    assert fake_steps == ["allocator", "cache", "distributed"]
    assert first == runtime.ProcessStart(host_allocator_tuned=True, compilation_cache="/cache", distributed=False)
    assert runtime.start_process() is first  # idempotent: nothing is done again
    assert fake_steps == ["allocator", "cache", "distributed"]


def test_start_process_after_a_failure_tries_again(fake_steps, monkeypatch):
    def broken_cache():
        raise ValueError("compilation cache directory '/x' cannot be created")

    monkeypatch.setattr(runtime, "enable_compilation_cache", broken_cache)
    with pytest.raises(ValueError, match="cannot be created"):
        runtime.start_process()
    monkeypatch.setattr(runtime, "enable_compilation_cache", lambda: None)
    assert runtime.start_process().compilation_cache is None
    assert fake_steps == ["allocator", "allocator", "distributed"]


# --- callers --------------------------------------------------------------------------


@pytest.fixture
def cli_events(monkeypatch):
    """`metacog` in this process with start-up and the sample stage replaced by recorders."""
    from metacog_jax import cli, pipeline

    events: list[str] = []
    monkeypatch.setattr(cli, "_quiet_logs", lambda verbose: None)  # leave this process's logging alone
    monkeypatch.setattr(runtime, "start_process", lambda: events.append("start"))
    monkeypatch.setattr(pipeline, "stage_sample", lambda config, data: events.append("sample") or {"d": "ok"})
    return events


def test_cli_starts_the_process_before_a_model_stage(cli_events, tmp_path):
    from metacog_jax import cli

    status = cli.main(["sample", f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={tmp_path}"])
    assert status == 0
    assert cli_events == ["start", "sample"]
    assert (tmp_path / "config.sample.json").is_file()


def test_cli_does_not_start_the_process_for_report_gap_study(cli_events, capsys):
    from metacog_jax import cli

    assert cli.main(["report"]) == 2
    assert cli.main(["gap"]) == 2
    assert cli.main(["study", "export"]) == 2
    assert cli_events == []
    err = capsys.readouterr().err
    assert "report needs at least one --run" in err and "study needs --db" in err


def test_load_demo_config_starts_the_process(monkeypatch):
    from metacog_jax import notebook

    events: list[str] = []
    monkeypatch.setattr(runtime, "start_process", lambda: events.append("start"))
    notebook.load_demo_config(str(REPO / "configs" / "tiny.py"), device_count=1)
    assert events == ["start"]
