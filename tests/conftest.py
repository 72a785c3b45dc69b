"""Shared fixtures: paths, the SmolLM2 tokenizer, and tiny random models for CPU tests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# One persistent compilation cache (jax's, as the CLI turns on) for the whole run, new and empty at its start
# and removed at its end: the test processes and every `metacog` or worker subprocess they start share it,
# so a program the tiny model compiles in one test (the same shapes, the same HLO) is read from disk in the
# next, and the user's own cache (~/.cache/metacog_jax/xla) is neither read nor written. The controller
# makes it before it starts the pytest-xdist workers, which inherit the variable. A cache given in the
# environment (or "off") is used as it is. test_runtime checks the cache switch itself.
_RUN_CACHE = None
if "METACOG_COMPILATION_CACHE" not in os.environ:
    _RUN_CACHE = os.environ["METACOG_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="metacog-test-xla-")
# XLA:CPU's quickest code generation for every test process and subprocess: the tests' programs are tiny, so
# compiling them is most of the suite's time and running them little of it. LLVM at its lowest optimization
# level, and fusions emitted by the classic elemental emitters instead of the newer MLIR fusion emitters (the
# two compile the same HLO; the classic path compiles these programs in about half the time). Matmuls still go
# to the same library kernels, and the tests' tolerances are the ones they had. Tests that set XLA_FLAGS for
# fake devices start from xla_flags(). A flag already given in the environment is kept as given.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
for _flag in TEST_XLA_FLAGS:
    if _flag.split("=")[0].lstrip("-") not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{_flag} {os.environ.get('XLA_FLAGS', '')}".strip()


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a subprocess with `devices` fake CPU devices (and the run's code-generation level)."""
    return f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"


# The tests run on the CPU (fake multi-device meshes). With the `tpu` extra installed (make test installs it for
# tests/test_plan.py) jax would otherwise try to start the TPU runtime in every test process and subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
SHARED_DATA = REPO.parent / "shared" / "data"

# `make test` runs the suite in 2 worker processes (pytest-xdist, `-n 2 --dist worksteal`; each worker is
# its own process, so jax, env vars and module state are per worker). There the modules with the longest
# tests (one to several minutes each on a 2-core machine) go first, so that no long test starts near the
# end while the other worker has nothing left to take. Heaviest first, from `pytest --durations=0`; a module
# keeps its own order (its fixtures are built once per worker). A plain `pytest` keeps the file order.
LONGEST_FIRST = ("test_multihost_stages.py", "test_plan.py", "test_tuning.py", "test_train.py", "test_cli.py",
                 "test_gap.py", "test_sampling.py", "test_notebook.py", "test_models.py", "test_gguf.py",
                 "test_conditions.py", "test_scan_layers.py", "test_scoring.py", "test_export.py")


def pytest_unconfigure(config):
    if _RUN_CACHE is not None:  # only the process that made it (the controller, or a plain pytest run)
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache():
    """The run's compilation cache in this test process too (runtime.enable_compilation_cache reads the env)."""
    from metacog_jax.runtime import enable_compilation_cache

    enable_compilation_cache()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def read_strict_json(path) -> object:
    """A JSON file the way a strict reader (JavaScript, jq) reads it: NaN or Infinity fail.

    Every artifact goes through metacog_jax.artifacts.json_ready, which writes them as null."""
    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constant)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark files not found at {SHARED_DATA} (CI keeps ../shared beside the clone)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_gguf_path() -> Path:
    from metacog_jax.models.loading import embedded_model_path

    return embedded_model_path("smollm2-135m-instruct-gguf")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_gguf_path):
    """The real SmolLM2 tokenizer (49152 ids, ChatML template), built from the GGUF metadata."""
    from metacog_jax.models.gguf_file import read_gguf
    from metacog_jax.models.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(read_gguf(smol_gguf_path), str(smol_gguf_path))


def tiny_config(model_type: str = "llama", **overrides):
    """A 2-layer, d=64 config with SmolLM2's vocabulary so the real tokenizer fits."""
    from metacog_jax.models.config import ModelConfig

    base = dict(model_type=model_type, vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=2,
                num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=True, qkv_bias=model_type == "qwen2", max_position_embeddings=2048,
                bos_token_id=1, eos_token_ids=(2,), pad_token_id=2)
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    """A tiny random llama-type Decoder (float32)."""
    from metacog_jax.models.decoder import create_model

    return create_model(tiny_config(), seed=0)
