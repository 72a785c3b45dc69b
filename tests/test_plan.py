"""`metacog plan`: model architectures offline, the roofline arithmetic, topology errors, the missing-extra
message, and ahead-of-time compiles for TPU slices (with libtpu, the `tpu` extra that `make test` installs).

The compile tests build abstract weights and compile the real train step (and the scorer and the
sampler's prefill for the small model) for a v5e slice on this CPU machine, then check that each step fits
the chip's HBM and that no large input or output is a whole copy on every chip.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from metacog_jax import plan as plan_lib
from metacog_jax.experiment_config import MODEL_PRESETS
from metacog_jax.models.architectures import ARCHITECTURES, preset_architecture
from metacog_jax.platforms import libtpu_installed

needs_libtpu = pytest.mark.skipif(not libtpu_installed(), reason="libtpu is not installed (the optional `tpu` "
                                  "extra: pip install -e '.[tpu]'; `make test` installs it)")
# Published sizes (model cards), in billions of parameters.
PUBLISHED_B = {"smollm2_135m": 0.135, "smollm2_360m": 0.362, "smollm2_1.7b": 1.71, "qwen2.5_0.5b": 0.494,
               "qwen2.5_1.5b": 1.54, "qwen2.5_7b": 7.61, "llama3.1_8b": 8.03, "llama3.1_70b": 70.6}


# -- architectures --------------------------------------------------------------------------------------
def test_every_preset_has_an_architecture():
    missing = sorted(set(MODEL_PRESETS) - set(ARCHITECTURES))
    assert not missing, f"presets without an architecture in models/architectures.py: {missing}"
    for name, size in PUBLISHED_B.items():
        assert ARCHITECTURES[name].num_params() / 1e9 == pytest.approx(size, rel=0.01), name
    with pytest.raises(KeyError, match="no architecture"):
        preset_architecture("gpt5")


def test_smollm2_architecture_matches_the_embedded_gguf(smol_gguf_path):
    from metacog_jax.models.config import from_gguf_metadata
    from metacog_jax.models.gguf_file import read_gguf

    meta = from_gguf_metadata(read_gguf(smol_gguf_path).metadata, str(smol_gguf_path))
    ours = ARCHITECTURES["smollm2_135m_gguf"]
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "rope_theta"):
        assert getattr(ours, field) == getattr(meta, field), field


def test_tiny_preset_is_the_test_model():
    from metacog_jax.experiment_config import tiny_model_fields
    from metacog_jax.models.build import random_model_config

    assert ARCHITECTURES["tiny"] == random_model_config(tiny_model_fields())


# -- arithmetic, names, messages ------------------------------------------------------------------------
def test_roofline_takes_the_slowest_resource_and_mfu_follows():
    chip = plan_lib.TpuChip("x", peak_flops=100e12, hbm_bytes=16e9, hbm_bandwidth=1e12, ici_bandwidth=0.5e12)
    roof = plan_lib._roofline(chip, flops=50e12, bytes_accessed=0.2e12, ici_bytes=0.1e12)
    assert roof["compute_s"] == pytest.approx(0.5) and roof["hbm_s"] == pytest.approx(0.2)
    assert roof["ici_s"] == pytest.approx(0.2) and roof["step_s"] == pytest.approx(0.5)
    assert roof["bound"] == "compute"
    assert plan_lib._roofline(chip, 1e12, 2e12, 0.0)["bound"] == "hbm"
    # 4 chips, 0.5 s: 4 x 100e12 x 0.5 = 200e12 FLOPs of capacity; the model needs 80e12 -> 40%.
    assert plan_lib.estimated_mfu(80e12, 4, chip, 0.5) == pytest.approx(0.4)
    assert plan_lib.estimated_mfu(80e12, 4, chip, 0.0) == 0.0


def test_collective_bytes_reads_async_fused_and_plain_collectives():
    hlo = "\n".join([
        "%p0 = bf16[1024,4096]{1,0} parameter(0)",
        "%ag = bf16[4096,4096]{1,0} all-gather(%p0), replica_groups={{0,1,2,3}}, dimensions={0}",
        "%ar = f32[256]{0} all-reduce(%x), to_apply=%add",
        "%f = bf16[1024,4096]{1,0} fusion(%ag), kind=kCustom, calls=%all-reduce-scatter.2",
        "%s = (bf16[8,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(%q), dimensions={0}",
        "%d = bf16[32,8]{1,0} all-gather-done(%s)",
        # one all-gather XLA:TPU split over two async collective fusions: the same channel, counted once
        "%g1 = bf16[64,64]{1,0} all-gather(%param_0.1), channel_id=41, dimensions={1}",
        "%g2 = bf16[64,64]{1,0} all-gather(%param_0.2), channel_id=41, dimensions={1}",
    ])
    out = plan_lib.collective_bytes(hlo)
    assert out["all-gather"] == 4096 * 4096 * 2 + 32 * 8 * 2 + 64 * 64 * 2
    assert out["all-reduce"] == 2 * 256 * 4
    assert out["reduce-scatter"] == 4096 * 4096 * 2  # the unscattered operand
    assert out["all-to-all"] == out["collective-permute"] == 0


@pytest.mark.parametrize("name, match", [("v7:2x2", "unknown TPU generation"), ("v5e", "expected GENERATION"),
                                         ("v5e-16", "expected GENERATION")])
def test_unknown_topology_names_fail_clearly(name, match):
    with pytest.raises(ValueError, match=match):
        plan_lib.parse_topology(name)
    assert plan_lib.parse_topology("v5p:4x4x2")[1] == (4, 4, 2)


@needs_libtpu
def test_impossible_topology_fails_with_libtpus_reason():
    with pytest.raises(ValueError, match="v5e:3x3"):
        plan_lib.topology_devices("v5e:3x3")
    assert len(plan_lib.topology_devices("v5e:2x2")) == 4


def test_missing_extra_says_how_to_install(monkeypatch, capsys):
    from metacog_jax import cli, platforms

    monkeypatch.setattr(platforms, "libtpu_installed", lambda: False)
    with pytest.raises(plan_lib.MissingTpuExtra, match=r"pip install -e '\.\[tpu\]'"):
        plan_lib.topology_devices("v5e:2x2")
    assert cli.main(["plan", "--config=configs/tiny.py", "--topology=v5e:2x2"]) == 2
    assert "[tpu]" in capsys.readouterr().err


def test_cli_rejects_an_unknown_topology(capsys):
    from metacog_jax import cli

    assert cli.main(["plan", "--config=configs/tiny.py", "--topology=v9:2x2"]) == 2
    assert "unknown TPU generation 'v9'" in capsys.readouterr().err


def test_keep_off_absent_tpu_respects_a_set_value(monkeypatch):
    from metacog_jax import platforms

    monkeypatch.setattr(platforms, "libtpu_installed", lambda: True)
    monkeypatch.setattr(platforms, "tpu_chips_present", lambda: False)
    env = {"JAX_PLATFORMS": ""}
    assert not platforms.keep_off_absent_tpu(env) and env["JAX_PLATFORMS"] == ""
    env = {}
    if not any(__import__("os").path.exists(d) for d in platforms._NVIDIA_DEVICES):
        assert platforms.keep_off_absent_tpu(env) and env["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setattr(platforms, "tpu_chips_present", lambda: True)
    env = {}
    assert not platforms.keep_off_absent_tpu(env) and "JAX_PLATFORMS" not in env


# -- ahead-of-time compiles -----------------------------------------------------------------------------
def _config(preset: str, *overrides: str):
    from metacog_jax.config_utils import load_config

    return load_config(f"configs/multitask.py:model={preset}", list(overrides))


def assert_fits_and_sharded(result: plan_lib.Plan, steps: tuple[str, ...]) -> None:
    """Every step compiled, fits the chip's HBM, and keeps every large input/output sharded (an array of
    >= 2**20 elements fully replicated is a whole copy per chip: the model is not really sharded)."""
    assert not result.errors, result.errors
    assert [s.step for s in result.steps] == list(steps)
    for s in result.steps:
        assert s.fits, f"{s.step}: {s.total_bytes / plan_lib.GiB:.2f} GiB > {s.hbm_bytes / plan_lib.GiB:.2f} GiB"
        assert not s.replicated, f"{s.step}: large arrays replicated on every chip: {s.replicated}"
        assert s.flops > 0 and s.bytes_accessed > 0 and s.step_s > 0
        assert s.costs == "one loop body" or 0 < s.mfu <= 1
        assert s.params_bytes > 0 and s.total_bytes >= s.params_bytes


@needs_libtpu
@pytest.mark.slow
def test_smollm2_135m_compiles_and_fits_on_v5e_2x2():
    """SmolLM2-135M's architecture (from the preset, offline), all 30 layers scanned: the LoRA train step,
    the scorer and the sampler's prefill, bfloat16, fsdp over the 4 chips."""
    config = _config("smollm2_135m", "model.dtype=bfloat16", "model.param_dtype=bfloat16", "model.scan_layers=True",
                     "train.batch_size=8", "train.max_len=256")
    steps = ("train", "score", "prefill")
    # Memory and sharding (the costs' extrapolation compiles each step twice more; benchmarks/plan.py does it).
    result = plan_lib.plan(config, "v5e:2x2", steps=steps, prompt_len=128, layer_costs=False)
    assert [s.costs for s in result.steps] == ["one loop body"] * 3
    assert result.num_params == ARCHITECTURES["smollm2_135m"].num_params() and result.num_layers == 30
    assert result.chips == 4
    assert result.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert_fits_and_sharded(result, steps)
    train = result.steps[0]
    assert train.optimizer_bytes > 0 and train.optimizer_bytes < train.params_bytes  # LoRA: adapters only
    json.dumps(result.to_json())  # the --json output is plain JSON


@needs_libtpu
@pytest.mark.slow
def test_llama8b_width_train_step_compiles_sharded_on_v5e_4x4():
    """4 layers at Llama-3.1-8B's width (hidden 4096, 32 heads, vocab 128,256), full fine-tuning, bfloat16,
    scanned with full remat, on the preset's (1, -1, 4) mesh: fsdp 4 x tensor 4. 8 x 128 tokens, 2 rows a batch
    shard: what XLA:TPU's code generation takes grows with the tokens (70 s at 16 x 128, 50 s at 8 x 128 on 2
    cores), and the shardings checked here do not depend on them."""
    config = _config("llama3.1_8b", "model.dtype=bfloat16", "model.param_dtype=bfloat16", "train.lora.rank=0",
                     "model.scan_layers=True", "train.remat=full", "train.batch_size=8", "train.max_len=128")
    # Memory and sharding only (the costs' two extra unscanned compiles would triple the time).
    result = plan_lib.plan(config, "v5e:4x4", steps=("train",), num_layers=4, layer_costs=False)
    assert result.steps and result.steps[0].costs == "one loop body"
    assert result.num_layers == 4 and result.mesh == {"data": 1, "fsdp": 4, "tensor": 4}
    assert_fits_and_sharded(result, ("train",))
    train = result.steps[0]
    # 4 layers + embeddings + LM head ~ 1.7B parameters in bfloat16 over 16 chips: ~0.2 GiB a chip.
    n = result.num_params
    assert train.params_bytes == pytest.approx(2 * n / 16, rel=0.05)
    assert train.optimizer_bytes == pytest.approx(2 * train.params_bytes, rel=0.05)  # Adam's two moments
    assert math.isfinite(train.compile_s)
