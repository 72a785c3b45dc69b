"""Weight import/export between our Decoder and Hugging Face safetensors or llama.cpp GGUF files.

One declarative table maps each parameter path of ours to the checkpoint's tensor name plus a named
transform. Tensors are read one at a time (safetensors are memory-mapped), transformed on the host,
checked against the expected shape and placed straight onto their target sharding, so a model never
exists twice in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metacog_jax.models.config import ModelConfig

Path_ = tuple  # a parameter path in the NNX state, e.g. ('layers', 0, 'self_attn', 'q_proj', 'kernel')


class WeightLoadError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model config."""


# -- the name table -------------------------------------------------------------------------------------
# (our path pattern, HF name, GGUF name, transform). `{i}` is the layer index. Transforms:
#   "T"  : HF stores Linear weights [out, in]; ours are [in, out].
#   "id" : unchanged.
_LAYER_TABLE = [
    (("self_attn", "q_proj", "kernel"), "self_attn.q_proj.weight", "attn_q.weight", "T"),
    (("self_attn", "k_proj", "kernel"), "self_attn.k_proj.weight", "attn_k.weight", "T"),
    (("self_attn", "v_proj", "kernel"), "self_attn.v_proj.weight", "attn_v.weight", "T"),
    (("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", "attn_output.weight", "T"),
    (("self_attn", "q_proj", "bias"), "self_attn.q_proj.bias", "attn_q.bias", "id"),
    (("self_attn", "k_proj", "bias"), "self_attn.k_proj.bias", "attn_k.bias", "id"),
    (("self_attn", "v_proj", "bias"), "self_attn.v_proj.bias", "attn_v.bias", "id"),
    (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", "ffn_gate.weight", "T"),
    (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", "ffn_up.weight", "T"),
    (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", "ffn_down.weight", "T"),
    (("input_layernorm", "weight"), "input_layernorm.weight", "attn_norm.weight", "id"),
    (("post_attention_layernorm", "weight"), "post_attention_layernorm.weight", "ffn_norm.weight", "id"),
]
# Qwen3 and Gemma 3: a norm on each query and key head.
_QK_NORM_TABLE = [
    (("self_attn", "q_norm", "weight"), "self_attn.q_norm.weight", "attn_q_norm.weight", "id"),
    (("self_attn", "k_norm", "weight"), "self_attn.k_norm.weight", "attn_k_norm.weight", "id"),
]
# Gemma's four norms per layer: llama.cpp names the one after attention post_attention_norm, and the one
# before the MLP (post_attention_layernorm's place in Llama) ffn_norm.
_SANDWICH_GGUF = {"post_attention_layernorm": "post_attention_norm.weight"}
_SANDWICH_TABLE = [
    (("pre_feedforward_layernorm", "weight"), "pre_feedforward_layernorm.weight", "ffn_norm.weight", "id"),
    (("post_feedforward_layernorm", "weight"), "post_feedforward_layernorm.weight", "post_ffw_norm.weight", "id"),
]
_GLOBAL_TABLE = [
    (("embed_tokens", "embedding"), "model.embed_tokens.weight", "token_embd.weight", "id"),
    (("norm", "weight"), "model.norm.weight", "output_norm.weight", "id"),
    (("lm_head", "kernel"), "lm_head.weight", "output.weight", "T"),
]


def name_table(cfg: ModelConfig) -> list[tuple[Path_, str, str, str]]:
    """Every (our path, HF name, GGUF name, transform) the config's model has."""
    rows = []
    for path, hf, gg, tr in _GLOBAL_TABLE:
        if path[0] == "lm_head" and cfg.tie_word_embeddings:
            continue
        rows.append((path, hf, gg, tr))
    layer_table = list(_LAYER_TABLE)
    if cfg.qk_norm:
        layer_table += _QK_NORM_TABLE
    if cfg.sandwich_norms:
        layer_table = [(p, hf, _SANDWICH_GGUF.get(p[0], gg), tr) for p, hf, gg, tr in layer_table]
        layer_table += _SANDWICH_TABLE
    for i in range(cfg.num_layers):
        for path, hf, gg, tr in layer_table:
            if path[-1] == "bias" and not cfg.qkv_bias:
                continue
            rows.append((("layers", i) + path, f"model.layers.{i}.{hf}", f"blk.{i}.{gg}", tr))
    return rows


def _transform(x: np.ndarray, how: str) -> np.ndarray:
    return x.T if how == "T" else x


def _fill_state(model: nnx.Module, fetch: Callable[[Path_, str, str, str], np.ndarray],
                cfg: ModelConfig, source: str, shardings: Mapping[Path_, jax.sharding.Sharding] | None):
    """Replace every parameter of `model` (abstract or concrete) by the array `fetch` returns."""
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    table = name_table(cfg)
    expected = {row[0] for row in table}
    ours = {p for p, v in flat.items() if isinstance(v, nnx.Param) and not isinstance(v, nnx.LoRAParam)}
    if ours != expected:
        raise WeightLoadError(f"{source}: model parameters do not match the name table "
                              f"(missing {sorted(map(str, expected - ours))[:3]}, extra {sorted(map(str, ours - expected))[:3]})")
    for path, hf, gg, tr in table:
        var = flat[path]
        target = var.get_value()
        raw = fetch(path, hf, gg, tr)
        arr = _transform(raw, tr)
        if tuple(arr.shape) != tuple(target.shape):
            want = tuple(reversed(target.shape)) if tr == "T" else tuple(target.shape)
            raise WeightLoadError(
                f"{source}: tensor {hf!r} has shape {tuple(raw.shape)} in the checkpoint, but the model config "
                f"expects {want} (check config.json against the weights)")
        arr = np.asarray(arr, dtype=target.dtype)
        sharding = shardings.get(path) if shardings else None
        var.set_value(jax.device_put(arr, sharding) if sharding is not None else jnp.asarray(arr))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


# -- safetensors ----------------------------------------------------------------------------------------
def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's shard files: from model.safetensors.index.json, else model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise WeightLoadError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({model_dir / f for f in weight_map.values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise WeightLoadError(f"{model_dir}: no *.safetensors files (and no model.safetensors.index.json)")
    for f in files:
        if not f.exists():
            raise WeightLoadError(f"{f}: listed in the safetensors index but missing")
    return files


class _SafetensorsReader:
    """Lazy name -> numpy lookup across shards (memory-mapped, one tensor materialised at a time)."""

    def __init__(self, files: Iterable[Path]):
        from safetensors import safe_open

        self.handles, self.where = {}, {}
        for f in files:
            try:
                h = safe_open(str(f), framework="numpy")
            except Exception as e:  # safetensors raises its own error types for corrupt headers
                raise WeightLoadError(f"{f}: cannot read safetensors file ({e})") from None
            self.handles[f] = h
            for name in h.keys():
                self.where[name] = f

    def get(self, name: str) -> np.ndarray:
        f = self.where.get(name)
        if f is None:
            raise WeightLoadError(f"tensor {name!r} not found in {sorted(map(str, self.handles))}")
        try:
            return self.handles[f].get_tensor(name)
        except Exception as e:
            raise WeightLoadError(f"{f}: cannot read tensor {name!r} ({e})") from None


# Where a checkpoint keeps the decoder: "model." in causal-LM checkpoints; in Gemma 3's multimodal ones
# (4B/12B/27B) the language model's weights sit beside the vision tower's, as saved by transformers 4
# ("language_model.model.", head "language_model.lm_head.") or 5 ("model.language_model.", head "lm_head.").
_DECODER_PREFIXES = (("model.", ""), ("language_model.model.", "language_model."),
                     ("model.language_model.", ""))


def _decoder_prefix(names, source: str) -> tuple[str, str]:
    """(prefix of the decoder's tensors, prefix of lm_head) in a checkpoint with these tensor names."""
    for prefix, head in _DECODER_PREFIXES:
        if f"{prefix}embed_tokens.weight" in names:
            return prefix, head
    raise WeightLoadError(f"{source}: no token embedding found (looked for "
                          f"{', '.join(p + 'embed_tokens.weight' for p, _ in _DECODER_PREFIXES)})")


def load_safetensors(model: nnx.Module, model_dir: str | Path, cfg: ModelConfig,
                     shardings: Mapping[Path_, jax.sharding.Sharding] | None = None) -> nnx.Module:
    """Fill `model` from a Hugging Face directory's safetensors (single file or sharded with index); the
    text decoder only, for multimodal checkpoints."""
    model_dir = Path(model_dir)
    reader = _SafetensorsReader(safetensors_files(model_dir))
    prefix, head = _decoder_prefix(reader.where, str(model_dir))

    def fetch(path, hf, gg, tr):
        if hf.startswith("model."):
            hf = prefix + hf[len("model."):]
        elif hf.startswith("lm_head."):
            hf = head + hf
        return _to_numpy(reader.get(hf))

    return _fill_state(model, fetch, cfg, str(model_dir), shardings)


def _to_numpy(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "V" or str(x.dtype) == "bfloat16":  # bfloat16 comes back via ml_dtypes
        x = x.astype(np.float32)
    return x


# -- GGUF -----------------------------------------------------------------------------------------------
def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved-pair RoPE -> Hugging Face's split halves).

    llama.cpp's converter reorders the rows of each head from [first half, second half] to interleaved
    pairs; w is [out, in] with out = n_heads * head_dim.
    """
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(model: nnx.Module, reader, cfg: ModelConfig, source: str,
              shardings: Mapping[Path_, jax.sharding.Sharding] | None = None,
              memo: dict[str, np.ndarray] | None = None) -> nnx.Module:
    """Fill `model` from a parsed GGUF file (`gguf_file.read_gguf`), dequantizing each tensor to float32.

    `memo` (optional): dequantized tensors by GGUF name, read from when present and filled otherwise, so a
    process that loads the same file again skips the dequantization (and, if it holds every tensor, the
    reader: `reader` may then be None).
    """
    from gguf.quants import dequantize

    tensors = None

    def fetch(path, hf, gg, tr):
        nonlocal tensors
        if memo is not None and gg in memo:
            return memo[gg]
        if tensors is None:
            tensors = {t.name: t for t in reader.tensors}
        t = tensors.get(gg)
        if t is None and gg == "output.weight":
            t = tensors.get("token_embd.weight")  # llama.cpp omits the head when tied
        if t is None:
            raise WeightLoadError(f"{source}: tensor {gg!r} not found in the GGUF file")
        x = dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape(tuple(int(d) for d in reversed(t.shape)))  # ggml dims are innermost first
        if cfg.model_type == "llama" and gg.endswith(("attn_q.weight", "attn_k.weight")):
            x = _unpermute_rope(x, cfg.num_heads if "attn_q" in gg else cfg.num_kv_heads)
        if cfg.norm_offset and gg.endswith("norm.weight"):
            x = x - cfg.norm_offset  # llama.cpp stores Gemma's norms as 1 + weight
        if memo is not None:
            memo[gg] = x
        return x

    return _fill_state(model, fetch, cfg, source, shardings)


def gguf_has_output_head(reader) -> bool:
    return any(t.name == "output.weight" for t in reader.tensors)


# -- export ---------------------------------------------------------------------------------------------
def hf_config_dict(cfg: ModelConfig) -> dict:
    """A transformers `config.json` dict for the model (a text-only causal LM of its family; Gemma 3 is
    written as Gemma3ForCausalLM, model_type gemma3_text, whatever checkpoint it came from)."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
    rope = {"rope_type": cfg.rope_scaling.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.rope_type != "default":
        s = cfg.rope_scaling
        rope.update(factor=s.factor)
        if s.rope_type == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
    d = {
        "architectures": [arch[cfg.model_type]],
        "model_type": "gemma3_text" if cfg.model_type == "gemma3" else cfg.model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps, "rope_parameters": rope,
        "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings, "hidden_act": cfg.hidden_act,
        "bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
        "eos_token_id": (list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1
                         else (cfg.eos_token_ids[0] if cfg.eos_token_ids else None)),
        "torch_dtype": "float32",
    }
    window = cfg.sliding_window or None
    types = list(cfg.layer_types) or ["full_attention"] * cfg.num_layers
    if cfg.model_type in ("qwen2", "qwen3"):
        d.update(use_sliding_window=window is not None, sliding_window=window, layer_types=types,
                 max_window_layers=cfg.num_layers)
    if cfg.model_type == "qwen3":
        d.update(attention_bias=False)
    if cfg.model_type == "mistral":
        d.update(sliding_window=window)
    if cfg.model_type == "gemma3":
        rope["rope_theta"] = cfg.rope_theta
        d.update(hidden_activation=cfg.hidden_act, sliding_window=window, layer_types=types,
                 query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim),
                 final_logit_softcapping=None, attn_logit_softcapping=None,
                 rope_parameters={"full_attention": rope, "sliding_attention": {
                     "rope_type": "default", "rope_theta": cfg.local_rope_theta or cfg.rope_theta}})
        d.pop("rope_theta")
    return d


def _int_if_whole(x: float):
    return int(x) if float(x).is_integer() else float(x)


def _flatten(tree, prefix=()):
    """(path tuple, array) of a nested dict, e.g. (('layers', 0, 'self_attn', 'q_proj', 'kernel'), array)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def export_safetensors(model: nnx.Module, out_dir: str | Path, cfg: ModelConfig, tokenizer=None) -> Path:
    """Write a Hugging Face directory (config.json, model.safetensors, tokenizer files) atomically:
    everything goes to a temporary sibling directory that is renamed into place at the end."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    from metacog_jax.models.decoder import unscanned_state

    # Files keep one tensor per layer: a scanned model's stacked layers are split (a no-op otherwise).
    flat = dict(_flatten(unscanned_state(nnx.to_pure_dict(nnx.state(model, nnx.Param)))))
    tensors = {}
    for path, hf, gg, tr in name_table(cfg):
        tensors[hf] = np.ascontiguousarray(_transform(np.asarray(flat[path], np.float32), tr))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
