"""`metacog plan`: model architectures offline, the roofline arithmetic, topology errors, the missing-extra
message, and ahead-of-time compiles for TPU slices (with libtpu, the `tpu` extra that `make test` installs).

The compile tests build abstract weights and compile the real train step (and the scorer and the
sampler's prefill for the small model) for a v5e slice on this CPU machine, then check that each step fits
the chip's HBM and that no large input or output is a whole copy on every chip.
"""

from __future__ import annotations

import dataclasses
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


def test_forward_flops_count_the_head_only_where_logits_are_needed():
    """The sampler's and scorer's model FLOPs: 2 x the layers' matmuls per token (ModelConfig.flops_per_token
    without attention, from its own per-projection sum) + the vocabulary projection per row of logits."""
    for name in ("llama3.1_70b", "smollm2_135m", "qwen2.5_7b"):
        arch = ARCHITECTURES[name]
        head = 2.0 * arch.vocab_size * arch.hidden_size
        per_token = arch.flops_per_token(0) - head
        # (the norms' weights, a few per layer, are counted as parameters and are no matmul: rel 1e-3)
        assert plan_lib.forward_flops(arch, 4096, 16) == pytest.approx(4096 * per_token + 16 * head, rel=1e-3)
    # 2 layers at 70B's width: 2N per prompt token counted the 2.1B embedding and head parameters at every
    # token, about twice what the prefill does.
    arch = plan_lib.with_layers(ARCHITECTURES["llama3.1_70b"], 2)
    assert 2.0 * arch.num_params() * 4096 > 2 * plan_lib.forward_flops(arch, 4096, 16)


def test_train_flops_count_what_the_step_computes():
    """A train step's model FLOPs as it runs them: 3 x a forward pass (forward, backward to activations and
    to weights) with the head at the loss positions; LoRA: 2 x the frozen forward + 6 x the adapters. The
    issue's 6N per token counts the embedding lookup and the head at every token."""
    for name in ("llama3.1_8b", "smollm2_135m", "qwen2.5_7b"):
        arch = ARCHITECTURES[name]
        assert plan_lib.train_flops(arch, 8192, 2560) == pytest.approx(3 * plan_lib.forward_flops(arch, 8192, 2560))
        assert plan_lib.train_flops(arch, 8192, 2560, n_lora=10 ** 6) == pytest.approx(
            2 * plan_lib.forward_flops(arch, 8192, 2560) + 6e6 * 8192)
    # Llama-3.1-8B, 16 x 512 tokens, 160 loss positions a row: 6N per token is 12% more than the step runs.
    arch = ARCHITECTURES["llama3.1_8b"]
    assert 6 * arch.num_params() * 8192 / plan_lib.train_flops(arch, 8192, 16 * 160) == pytest.approx(1.124, abs=0.005)
    # 2 layers at that width: 6N per token is more than twice it (an MFU of 285% on a v5p:2x2x1).
    shallow = plan_lib.with_layers(arch, 2)
    assert 6 * shallow.num_params() * 16384 > 2 * plan_lib.train_flops(shallow, 16384, 16 * 160)


def test_loss_chunks_and_the_train_steps_memory_advice():
    """The chunks train.loss_chunk splits a row's loss positions into, and advice that names only the memory
    knobs not yet at their most frugal setting (it suggested train.remat=matmuls or full under full remat)."""
    assert plan_lib.loss_chunks(_tiny("train.max_len=32", "train.loss_positions=0", "train.loss_chunk=8")) == (32, 4)
    assert plan_lib.loss_chunks(_tiny("train.max_len=32", "train.loss_positions=20", "train.loss_chunk=8")) == (20, 3)
    assert plan_lib.loss_chunks(_tiny("train.max_len=32", "train.loss_positions=64")) == (32, 1)
    plain = plan_lib._train_memory_knobs(_tiny())
    assert plain == ["rematerialization (train.remat=matmuls or full; now none)",
                     "the loss in chunks of positions (train.loss_chunk)"]
    assert plan_lib._train_memory_knobs(_tiny("train.remat=matmuls")) [0] == (
        "rematerialization (train.remat=full; now matmuls)")
    assert plan_lib._train_memory_knobs(_tiny("train.remat=full", "train.loss_chunk=64")) == [
        "a smaller train.loss_chunk (now 64 positions)"]


def test_hbm_refusal_reads_xlas_figures():
    g = plan_lib.GiB
    temps = plan_lib.hbm_refusal("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                                 "temporaries (22.66G) exceeds available HBM (15.75G).")
    assert temps["required"] == pytest.approx(22.66 * g) and temps["available"] == pytest.approx(15.75 * g)
    assert temps["temporaries"] == temps["required"] and "22.66 GiB of the 15.75 GiB" in temps["reason"]
    used = plan_lib.hbm_refusal("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
                                "space hbm. Used 63.80G of 30.75G hbm. Exceeded hbm capacity by 33.05G.\n\n"
                                "Program hbm requirement 63.80G:\n    global 1.14M\n"
                                "    HLO temp         63.79G (100.0% utilization)")
    assert used["required"] == pytest.approx(63.80 * g) and used["available"] == pytest.approx(30.75 * g)
    assert used["temporaries"] == pytest.approx(63.79 * g)
    assert plan_lib.hbm_refusal("INVALID_ARGUMENT: something else (22.66G) exceeds available HBM (15.75G)") is None
    assert plan_lib.hbm_refusal("RESOURCE_EXHAUSTED: no figures here") is None


def test_repeated_costs_repeat_the_loop_body_not_the_update():
    step = (110.0, 1010.0, {"all-gather": 40, "all-reduce": 2})
    update = (10.0, 10.0, {"all-reduce": 2})
    flops, accessed, coll = plan_lib.repeated_costs(step, update, 4)
    assert flops == 4 * 100 + 10 and accessed == 4 * 1000 + 10
    assert coll == {"all-gather": 160, "all-reduce": 2}


def test_collective_bytes_reads_async_fused_and_plain_collectives():
    hlo = "\n".join([
        # XLA:TPU's fused reduce-scatter: the fusion counts (as a reduce-scatter); the all-reduce with a
        # channel_id in the computation it calls is the same traffic and must not count again (nor what it calls)
        "%all-reduce-scatter.2 (input: bf16[4096,4096]) -> bf16[1024,4096] {",
        "  %input = bf16[4096,4096]{1,0} parameter(0)",
        "  %inner = bf16[4096,4096]{1,0} all-reduce(%input), channel_id=23, replica_groups={{0,1,2,3}}, "
        "to_apply=%add.1, backend_config={}",
        "  %pid = u32[] partition-id()",
        "  ROOT %slice = bf16[1024,4096]{1,0} dynamic-slice(%inner, %pid, %pid), dynamic_slice_sizes={1024,4096}",
        "}",
        # one all-gather XLA:TPU split over two async collective fusions: the same channel, counted once
        "%fused_computation.7 (param_0.1: bf16[64,16]) -> bf16[64,64] {",
        "  %param_0.1 = bf16[64,16]{1,0} parameter(0)",
        "  ROOT %g1 = bf16[64,64]{1,0} all-gather(%param_0.1), channel_id=41, dimensions={1}",
        "}",
        "%fused_computation.8 (param_0.2: bf16[64,16]) -> bf16[64,64] {",
        "  %param_0.2 = bf16[64,16]{1,0} parameter(0)",
        "  ROOT %g2 = bf16[64,64]{1,0} all-gather(%param_0.2), channel_id=41, dimensions={1}",
        "}",
        "ENTRY %main.9 (p0: bf16[1024,4096]) -> bf16[1024,4096] {",
        "  %p0 = bf16[1024,4096]{1,0} parameter(0)",
        "  %ag = bf16[4096,4096]{1,0} all-gather(%p0), replica_groups={{0,1,2,3}}, dimensions={0}",
        "  %ar = f32[256]{0} all-reduce(%x), to_apply=%add",
        "  %f = bf16[1024,4096]{1,0} fusion(%ag), kind=kCustom, calls=%all-reduce-scatter.2",
        "  %s = (bf16[8,8]{1,0}, bf16[32,8]{1,0}) all-gather-start(%q), dimensions={0}",
        "  %d = bf16[32,8]{1,0} all-gather-done(%s)",
        "  %a1 = bf16[64,64]{1,0} fusion(%q1), kind=kCustom, calls=%fused_computation.7",
        "  %a2 = bf16[64,64]{1,0} fusion(%q2), kind=kCustom, calls=%fused_computation.8",
        "  ROOT %out = bf16[1024,4096]{1,0} add(%f, %f)",
        "}",
    ])
    out = plan_lib.collective_bytes(hlo)
    assert out["all-gather"] == 4096 * 4096 * 2 + 32 * 8 * 2 + 64 * 64 * 2
    assert out["all-reduce"] == 2 * 256 * 4
    assert out["reduce-scatter"] == 4096 * 4096 * 2  # the unscattered operand
    assert out["all-to-all"] == out["collective-permute"] == 0


@pytest.mark.parametrize("name, match", [("v7:2x2", "unknown TPU generation"), ("v5e", "expected GENERATION"),
                                         ("v5e-16", "expected GENERATION"), ("v5e:2x2x2", "v5e slices are 2-D"),
                                         ("v6e:2x2x1", "v6e slices are 2-D")])
def test_unknown_topology_names_fail_clearly(name, match):
    with pytest.raises(ValueError, match=match):
        plan_lib.parse_topology(name)
    assert plan_lib.parse_topology("v5p:4x4x2")[1] == (4, 4, 2)


def test_hbm_capacities_are_above_what_xla_reports_usable():
    """XLA:TPU's refusals name the HBM it can use per chip (15.75G on a v5e, 31.25G on a v6e, 30.75G on a
    megacore v4; binary units); the capacity the plan checks against must be a little above each, as the
    runtime keeps a little. (32 GB = 29.80 GiB for the v6e would be below.)"""
    usable = {"v5e": 15.75, "v6e": 31.25, "v4": 30.75}
    for name, gib in usable.items():
        capacity = plan_lib.TPU_CHIPS[name].hbm_bytes / plan_lib.GiB
        assert gib < capacity < gib + 1.5, (name, capacity)


@needs_libtpu
def test_impossible_topology_fails_with_libtpus_reason():
    with pytest.raises(ValueError, match="v5e:3x3"):
        plan_lib.topology_devices("v5e:3x3")
    assert len(plan_lib.topology_devices("v5e:2x2")) == 4


@needs_libtpu
def test_v4_is_one_device_per_chip_and_single_chips_are_slices():
    """libtpu's default v4 has one device per TensorCore (8 for v4:2x2x1), which jax.make_mesh refuses; a v4
    runs megacore, one device per chip. A one-chip v5e/v6e is a slice too (libtpu's default host is 2x2)."""
    from metacog_jax.config_utils import load_config

    devices = plan_lib.topology_devices("v4:2x2x1")
    assert len(devices) == 4
    mesh = plan_lib.plan_mesh(load_config("configs/tiny.py"), devices)
    assert mesh.devices.size == 4
    for name in ("v5e:1x1", "v6e:1x1"):
        assert len(plan_lib.topology_devices(name)) == 1, name


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


@needs_libtpu
def test_cli_says_why_a_mesh_or_a_step_fails_and_exits_2(monkeypatch, capsys):
    """2 is bad input or a step that cannot be compiled; 1 is reserved for "does not fit"."""
    from metacog_jax import cli

    def no_mesh(config, devices):
        raise AssertionError("requires one device per chip (megacore mode)")  # what jax.make_mesh raised for v4

    with monkeypatch.context() as m:
        m.setattr(plan_lib, "plan_mesh", no_mesh)
        assert cli.main(["plan", "--config=configs/tiny.py", "--topology=v5e:2x2"]) == 2
    err = capsys.readouterr().err
    assert "cannot lay the config's mesh.shape" in err and "AssertionError: requires one device per chip" in err

    def broken(*args):
        raise RuntimeError("INTERNAL: an unexpected compiler error\nwith more lines")

    monkeypatch.setitem(plan_lib._BUILDERS, "decode", broken)
    assert cli.main(["plan", "--config=configs/tiny.py", "--topology=v5e:2x2", "--steps=decode"]) == 2
    assert "could not compile for v5e:2x2: decode: RuntimeError: INTERNAL: an unexpected compiler error" in \
        capsys.readouterr().err


def _benchmark(monkeypatch):
    """benchmarks/plan.py as a module (it puts its own folder first on sys.path and imports `common`)."""
    import importlib.util
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "plan.py"
    spec = importlib.util.spec_from_file_location("benchmarks_plan_under_test", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_a_row_without_a_plan_and_a_refused_step(monkeypatch):
    import subprocess

    bench = _benchmark(monkeypatch)
    row = bench.ROWS[0]
    crash = subprocess.CompletedProcess([], 1, stdout="", stderr="Traceback (most recent call last):\n  ...\n"
                                        "AssertionError: requires one device per chip (megacore mode)\n")
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: crash)
    result = bench.run_row(row, timeout=1)
    assert "plan" not in result and "without a plan" in result["error"] and "megacore" in result["error"]
    assert "megacore" in bench.table([result])
    refused = {"row": dataclasses.asdict(row), "wall_s": 1.0, "plan": {
        "mesh": {"data": 1, "fsdp": 4, "tensor": 4}, "errors": {}, "steps": [{
            "fits": False, "over_bytes": 7 * 2 ** 30, "refused": "XLA:TPU refused to compile it", "total_bytes":
            22.75 * 2 ** 30, "hbm_bytes": 15.75 * 2 ** 30, "mfu": None, "step_s": None, "bound": None,
            "compile_s": 2.0}]}}
    line = bench.table([refused]).splitlines()[-1]
    assert "no (+7.0, XLA refused)" in line and "22.8 / 15.8 | - | - | - |" in line


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


def _tiny(*overrides: str):
    from metacog_jax.config_utils import load_config

    return load_config("configs/tiny.py", list(overrides))


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


@needs_libtpu
@pytest.mark.parametrize("scan", [False, True])
def test_the_kv_cache_prefill_returns_stays_sharded(scan):
    """The continuation slots share_prefix makes inside the prefill step are sharded like its rows, in both
    cache layouts (unconstrained, XLA:TPU returned them whole on every chip: 70B's [160, 8, 32, 128] x 160)."""
    from metacog_jax import sharding as sharding_lib
    from metacog_jax.models.build import rules_from_config

    config = _tiny(f"model.scan_layers={scan}")
    mesh = plan_lib.plan_mesh(config, plan_lib.topology_devices("v5e:2x2"))
    arch = plan_lib.model_architecture(config, None)
    with sharding_lib.sharding_context(mesh, rules_from_config(config)):
        spec = plan_lib.prefill_spec(config, arch, mesh, 32)
        compiled = spec.fn.lower(*spec.args, **spec.kwargs).compile()
    cache = compiled.out_info[1]
    slots = cache.keys if scan else cache.keys[0]
    assert slots.shape[-4:] == (config.sample.batch_size * config.sample.k, 2, config.sample.max_new_tokens, 16)
    assert plan_lib.replicated_large_arrays(compiled, (spec.args, spec.kwargs), min_elements=1024) == []


@needs_libtpu
def test_sampler_steps_replicate_rows_they_cannot_split_and_the_scorer_says_why():
    """6 prompts over data x fsdp = 4: the sampler places them whole on every chip (multihost.row_sharding),
    so prefill and decode compile; the scorer needs divisible rows, and the error names eval.batch_size."""
    config = _tiny("sample.batch_size=6", "eval.batch_size=6")
    result = plan_lib.plan(config, "v5e:2x2", steps=("prefill", "decode"), prompt_len=32)
    assert not result.errors and [s.step for s in result.steps] == ["prefill", "decode"]
    assert all(s.fits for s in result.steps)
    with pytest.raises(plan_lib.PlanError, match=r"score: ValueError: config eval.batch_size=6: .*not divisible"):
        plan_lib.plan(config, "v5e:2x2", steps=("score",), prompt_len=32)


@needs_libtpu
def test_a_step_xla_refuses_for_want_of_hbm_does_not_fit(capsys):
    """XLA:TPU refuses at compile time (before code generation: seconds) a step that needs more HBM than a
    chip has: that is a step that does not fit (exit 1, over by X GiB, the knobs), not a compile error."""
    from metacog_jax import cli

    rc = cli.main(["plan", "--config=configs/multitask.py:model=smollm2_135m", "--topology=v5e:2x2",
                   "--num_layers=2", "--steps=prefill", "--config.sample.batch_size=512", "--prompt_len=2048",
                   "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and not out["fits"] and not out["errors"], out["errors"]
    step = out["steps"][0]
    assert step["step"] == "prefill" and step["costs"] == "refused" and step["mfu"] is None and not step["fits"]
    assert step["hbm_bytes"] == pytest.approx(15.75 * plan_lib.GiB)  # what XLA says a v5e can use
    over = (step["total_bytes"] - step["hbm_bytes"]) / plan_lib.GiB
    assert over > 1 and step["over_bytes"] / plan_lib.GiB == pytest.approx(over)
    assert step["advice"][0].startswith(f"over by {over:.2f} GiB per chip: XLA:TPU refused to compile it")
    assert any("a smaller sample.batch_size" in line for line in step["advice"])


@needs_libtpu
@pytest.mark.slow
def test_gradient_accumulation_costs_every_micro_batch():
    """configs/tiny.py on v5e:2x2: a step of 2 accumulated micro-batches of 4 rows costs about what 2 steps of
    4 rows do, so its estimated MFU is about theirs. XLA counts the micro-batch loop once: unscaled, the
    accumulated step's FLOPs were those of one micro-batch and its MFU nearly twice."""
    def train(*overrides):
        return plan_lib.plan(_tiny("train.max_len=32", *overrides), "v5e:2x2", steps=("train",)).steps[0]

    accumulated, micro = train("train.batch_size=8", "train.grad_accum=2"), train("train.batch_size=4")
    assert accumulated.micro_batches == 2 and micro.micro_batches == 1
    assert accumulated.model_flops == pytest.approx(2 * micro.model_flops)
    assert accumulated.flops == pytest.approx(2 * micro.flops, rel=0.05)
    assert accumulated.mfu == pytest.approx(micro.mfu, rel=0.15)


@needs_libtpu
def test_a_refused_train_step_counts_its_arguments_per_chip():
    """A train step XLA:TPU refuses for its temporaries (256 x 2048 tokens, logits at every position): the
    other arguments are the batch's shard (the whole unsharded states were counted: 0.10 GiB for 0.004), the
    total adds the arguments to XLA's temporaries (it showed the temporaries alone, less than its own
    parts), and the advice leaves out the remat it already has."""
    config = _config("smollm2_135m", "train.batch_size=256", "train.max_len=2048", "train.loss_positions=0",
                     "train.remat=full")
    step = plan_lib.plan(config, "v5e:2x2", steps=("train",), num_layers=2).steps[0]
    assert step.refused and not step.fits and step.costs == "refused"
    batch_shard = 7 * 256 * 2048 * 4 / 4  # seven int32/float32 [256, 2048] inputs over fsdp=4
    assert batch_shard <= step.other_argument_bytes < batch_shard + 2 ** 20
    parts = step.params_bytes + step.optimizer_bytes + step.other_argument_bytes + step.temp_bytes
    assert step.total_bytes == parts and step.over_bytes == pytest.approx(parts - step.hbm_bytes)
    assert step.advice[0].startswith(f"over by {step.over_bytes / plan_lib.GiB:.2f} GiB per chip")
    knobs = " ".join(step.advice)
    assert "train.remat" not in knobs and "the loss in chunks of positions (train.loss_chunk)" in knobs


def _tiny_train_config(*overrides: str):
    return _tiny("train.max_len=32", "train.loss_positions=0", "train.batch_size=4", *overrides)


def _tiny_train(*overrides: str) -> plan_lib.StepPlan:
    return plan_lib.plan(_tiny_train_config(*overrides), "v5e:2x2", steps=("train",)).steps[0]


@needs_libtpu
def test_a_chunked_loss_costs_every_chunk():
    """configs/tiny.py (a vocabulary-heavy model) on v5e:2x2, 32 loss positions a row: the loss in 4 or 2
    chunks costs what it does whole. XLA counts the chunks' loop once: the chunked step's own counts had 40%
    (4 chunks) and 76% of the unchunked FLOPs, and a higher MFU."""
    whole = _tiny_train()
    for chunk, n in ((8, 4), (16, 2)):
        chunked = _tiny_train(f"train.loss_chunk={chunk}")
        assert chunked.loss_chunks == n and chunked.loss_costs == "whole"
        assert chunked.flops == pytest.approx(whole.flops, rel=0.02)
        assert chunked.mfu == pytest.approx(whole.mfu, rel=0.05)
    assert whole.loss_chunks == 1 and whole.loss_costs == ""


@needs_libtpu
def test_a_chunked_loss_too_big_to_cost_whole_says_so(monkeypatch):
    """When XLA refuses the one-chunk compile for want of HBM, the plan keeps the chunked step's own counts
    and says they hold one chunk (the MFU marked high); the step still fits."""
    real, calls = plan_lib._spec_costs, []

    def refuse_once(specs, num_layers):
        calls.append(len(specs))
        if len(calls) == 1:
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                               "temporaries (22.66G) exceeds available HBM (15.75G).")
        return real(specs, num_layers)

    monkeypatch.setattr(plan_lib, "_spec_costs", refuse_once)
    result = plan_lib.plan(_tiny_train_config("train.loss_chunk=8"), "v5e:2x2", steps=("train",))
    step = result.steps[0]
    assert calls == [1] and step.fits and step.loss_costs == "one chunk" and step.loss_chunks == 4
    monkeypatch.setattr(plan_lib, "_spec_costs", real)
    assert step.flops < 0.9 * _tiny_train().flops  # one chunk of four counted
    text = plan_lib.format_plan(result)
    assert f"{step.mfu:.1%} (high)" in text and "count one chunk's LM head and loss of 4" in text
