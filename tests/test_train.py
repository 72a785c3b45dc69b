"""Training: sharded == unsharded, multi-process agreement, kill -9 + resume, LoRA, bad input.

Each run is a subprocess (tests/train_worker.py) because fake CPU devices must be configured before jax
is imported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import xla_flags

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "train_worker.py"


def _env(devices: int = 1, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METACOG_") or k == "METACOG_COMPILATION_CACHE"}
    env["XLA_FLAGS"] = xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_worker(workdir: Path, overrides: dict, devices: int = 1, timeout: int = 300, **env) -> dict:
    proc = subprocess.run([sys.executable, str(WORKER), str(workdir), json.dumps(overrides)], env=_env(devices, **env),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][7:])


def params(workdir: Path) -> list[np.ndarray]:
    with np.load(workdir / "params.npz") as z:
        return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("single")
    return wd, run_worker(wd, {"mesh.shape": [1, 1, 1], "train.lora.rank": 0})


def test_fsdp4_tensor2_equals_single_device(single_device_run, tmp_path):
    wd1, r1 = single_device_run
    r8 = run_worker(tmp_path, {"mesh.shape": [1, 4, 2], "train.lora.rank": 0}, devices=8)
    assert r8["devices"] == 8 and r1["devices"] == 1
    np.testing.assert_allclose(r8["losses"], r1["losses"], atol=1e-5)
    for a, b in zip(params(tmp_path), params(wd1)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert r1["losses"][-1] < r1["losses"][0]


def test_grad_accumulation_equals_one_big_batch(single_device_run, tmp_path):
    wd1, r1 = single_device_run
    r = run_worker(tmp_path, {"mesh.shape": [1, 1, 1], "train.lora.rank": 0, "train.grad_accum": 4})
    np.testing.assert_allclose(r["losses"], r1["losses"], atol=1e-5)
    for a, b in zip(params(tmp_path), params(wd1)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_two_processes_agree(single_device_run, tmp_path):
    import portpicker

    wd1, r1 = single_device_run
    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        env = _env(4, METACOG_COORDINATOR=f"127.0.0.1:{port}", METACOG_NUM_PROCESSES=2, METACOG_PROCESS_ID=pid)
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path), json.dumps({"mesh.shape": [2, 2, 2], "train.lora.rank": 0})],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][7:]))
    finally:
        for p in procs:
            p.kill()
    assert outs[0]["devices"] == outs[1]["devices"] == 8
    assert outs[0]["hash"] == outs[1]["hash"]  # both processes hold the same global parameters
    np.testing.assert_allclose(outs[0]["losses"], r1["losses"], atol=1e-5)
    for a, b in zip(params(tmp_path), params(wd1)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    cfg = {"mesh.shape": [1, 1, 1], "train.lora.rank": 4, "train.steps": 8}
    full = run_worker(tmp_path / "full", cfg)
    wd = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(wd), json.dumps(cfg)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.time() + 240
    while time.time() < deadline:
        ckpts = wd / "checkpoints"
        if ckpts.exists() and any(p.name.isdigit() and int(p.name) >= 3 for p in ckpts.iterdir()):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert done_before < 8, "the run finished before it could be killed"
    resumed = run_worker(wd, cfg)
    assert resumed["end_step"] == 8
    assert resumed["hash"] == full["hash"]  # bitwise equal parameters on CPU
    steps = [json.loads(l)["step"] for l in open(wd / "train" / "metrics.jsonl")]
    assert sorted(set(steps)) == list(range(1, 9))  # no step lost


def test_half_written_checkpoint_is_skipped(tmp_path, caplog):
    cfg = {"mesh.shape": [1, 1, 1], "train.lora.rank": 4, "train.steps": 3, "train.keep_checkpoints": 3}
    run_worker(tmp_path, cfg)
    latest = tmp_path / "checkpoints" / "3"
    shutil.rmtree(latest / "trainable")  # as if the process died while writing step 3's arrays
    (tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp").mkdir()  # an unfinished async save
    from metacog_jax.train.checkpoints import RunCheckpoints

    # A fresh run of 3 steps resumes from step 2 (step 3 unreadable) and redoes step 3.
    r = run_worker(tmp_path, cfg)
    assert r["end_step"] == 3
    lines = [json.loads(l) for l in open(tmp_path / "train" / "metrics.jsonl")]
    assert [l["step"] for l in lines] == [1, 2, 3, 3]
    assert RunCheckpoints(tmp_path / "checkpoints", async_save=False).steps()[-1] == 3


def test_lora_keeps_base_bitwise_and_saves_adapters_only(tmp_path):
    cfg = {"mesh.shape": [1, 1, 1], "train.lora.rank": 4, "train.lora.targets": ".*(q_proj|v_proj)$"}
    before = run_worker(tmp_path / "untrained", dict(cfg, **{"train.steps": 0}))  # same init path, no step
    after = run_worker(tmp_path / "trained", cfg)
    assert before["end_step"] == 0 and after["end_step"] == 5
    assert after["losses"][-1] < after["losses"][0]
    p0, p1 = params(tmp_path / "untrained"), params(tmp_path / "trained")
    assert len(p0) == len(p1)
    # LoRA leaves are the (in, rank) / (rank, out) matrices; everything else is the base model.
    is_lora = [4 in a.shape and a.ndim == 2 and min(a.shape) == 4 for a in p0]
    assert sum(is_lora) == 2 * 2 * 2  # lora_a + lora_b for 2 targets x 2 layers
    for a, b, lora in zip(p0, p1, is_lora):
        if not lora:
            np.testing.assert_array_equal(a, b)  # the base never moves
    assert any(not np.array_equal(a, b) for a, b, lora in zip(p0, p1, is_lora) if lora)
    from metacog_jax.train.checkpoints import RunCheckpoints

    ck = RunCheckpoints(tmp_path / "trained" / "checkpoints", async_save=False)
    meta = ck.read_meta(ck.steps()[-1])
    assert meta["trainable"] == "lora" and meta["layout"] == "per_layer"
    size = sum(f.stat().st_size for f in (tmp_path / "trained" / "checkpoints" / str(ck.steps()[-1]) / "trainable")
               .rglob("*") if f.is_file())
    n_base = sum(a.size for a, lora in zip(p0, is_lora) if not lora)
    assert size < 0.05 * n_base * 4  # adapters only (1,024 floats here), not the 3.2M-parameter base


# -- bad input (in-process, no fake devices needed) ---------------------------------------------------------
def test_mesh_that_does_not_divide_devices():
    from metacog_jax.sharding import make_mesh

    with pytest.raises(ValueError, match="device"):
        make_mesh((1, 3, 1))


def test_batch_not_divisible_by_data_axes():
    code = ("from metacog_jax.sharding import make_mesh, check_batch_divisible\n"
            "try:\n    check_batch_divisible(6, make_mesh((2, 4, 1)))\nexcept ValueError as e:\n    print('ERR', e)")
    out = subprocess.run([sys.executable, "-c", code], env=_env(8), capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "6" in out.stdout, out.stdout + out.stderr[-2000:]


def test_unknown_config_key_fails():
    from metacog_jax.config_utils import load_config

    with pytest.raises(ValueError, match="train.lr"):
        load_config(str(REPO / "configs" / "single.py"), ["train.lrr=1e-4"])


def test_attention_window_resolution_and_check():
    from metacog_jax.config_utils import load_config
    from metacog_jax.experiment_config import validate
    from metacog_jax.train import trainer

    seg = np.array([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 2, 0]])
    assert trainer.longest_segment(seg) == 4
    assert trainer.longest_segment(np.array([[0, 0, 1, 1, 1, 1, 1]])) == 5  # left padding
    assert trainer.longest_segment(np.zeros((2, 3), int)) == 0
    # the mask joins equal ids wherever they are: an id split by padding spans its first to last slot
    assert trainer.longest_segment(np.array([[1, 1, 0, 0, 1, 1]])) == 6
    assert trainer.longest_segment(np.array([[2, 2, 0, 1, 1, 1]])) == 3
    trainer.check_attention_window({"segment_ids": seg}, 4)
    trainer.check_attention_window({"segment_ids": seg}, 0)  # whole rows: no limit
    with pytest.raises(ValueError, match="example of 4 tokens but the attention window is 3"):
        trainer.check_attention_window({"segment_ids": seg}, 3)

    class Source:
        longest_example = 37

        def get(self, step):
            raise AssertionError("not read")

    config = load_config(str(REPO / "configs" / "single.py"), [])
    assert config.train.attention_window == -1
    assert trainer.resolve_attention_window(config, Source()) == 37
    assert trainer.resolve_attention_window(config, object()) == 0  # a source that does not say: whole rows
    config = load_config(str(REPO / "configs" / "single.py"), ["train.attention_window=64"])
    assert trainer.resolve_attention_window(config, Source()) == 64
    config = load_config(str(REPO / "configs" / "single.py"), ["train.attention_window=16"])
    with pytest.raises(ValueError, match="attention_window=16 is shorter than the longest training example"):
        trainer.resolve_attention_window(config, Source())
    with pytest.raises(ValueError, match="train.attention_window=-2"):
        validate(load_config(str(REPO / "configs" / "single.py"), ["train.attention_window=-2"]))


def test_lora_regex_matching_nothing_fails():
    from metacog_jax.experiment_config import default_config
    from metacog_jax.models.build import build_model
    from metacog_jax.models.lora import apply_lora

    c = default_config()
    c.model.name = "random"
    model = build_model(c).model
    with pytest.raises(ValueError, match="matches no linear layer"):
        apply_lora(model, ".*qproj$", 4, 8.0)


def test_metrics_log_writes_strict_jsonl_and_tensorboard_without_importing_torch(tmp_path):
    """One line per step (NaN as null) and a TensorBoard event file; tensorboardX is imported without torch
    (which it would load, about 4 s per training process, only to recognize torch tensors)."""
    code = ("import sys\nfrom metacog_jax.train.metrics_log import MetricsLog\n"
            f"log = MetricsLog({str(tmp_path)!r})\nlog.write(1, {{'loss': 0.5, 'grad_norm': float('nan')}})\n"
            "log.close()\nprint('TORCH', 'torch' in sys.modules)\nimport torch\nprint('LATER', torch.ones(2).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert "TORCH False" in out.stdout and "LATER 2.0" in out.stdout, out.stdout + out.stderr[-2000:]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "NaN" not in lines[0] and [json.loads(line) for line in lines] == \
        [{"step": 1, "loss": 0.5, "grad_norm": None}]
    assert [p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir()] == [True]
