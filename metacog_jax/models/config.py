"""Architecture description of a decoder LLM, read from a Hugging Face `config.json` or GGUF metadata.

One frozen dataclass covers the families we port: Llama (Llama 2/3.x, SmolLM2, Mistral without sliding
window) and Qwen2/Qwen2.5 (bias on the q/k/v projections). Anything we do not implement fails here,
before a single weight is read, with an error that lists what is supported.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
# GGUF `general.architecture` -> our model_type.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}


class UnsupportedModelError(ValueError):
    """The checkpoint describes an architecture or feature this codebase does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `rope_type` is one of SUPPORTED_ROPE_TYPES.

    llama3: low-frequency bands are divided by `factor`, high-frequency bands kept, and the band in
    between interpolated (Llama 3.1 recipe). linear: every frequency divided by `factor`.
    """

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer in the Hugging Face layout.

    Shapes used throughout the models package: hidden size D = `hidden_size`, N = `num_heads` query heads,
    K = `num_kv_heads` key/value heads (grouped-query attention when K < N), H = `head_dim`,
    F = `intermediate_size`, V = `vocab_size`.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"model config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(
                f"RoPE scaling {self.rope_scaling.rope_type!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")

    # -- derived quantities -------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * h * d
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * d * f + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + embed + d

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token: 2 x matmul parameters + attention scores/values (causal average)."""
        d, h = self.hidden_size, self.head_dim
        matmul = self.num_layers * (d * h * (self.num_heads + 2 * self.num_kv_heads)
                                    + self.num_heads * h * d + 3 * d * self.intermediate_size)
        matmul += self.vocab_size * d
        attention = self.num_layers * 2 * self.num_heads * h * seq_len  # QK^T and PV, half (causal) x 2 ops
        return 2.0 * matmul + attention

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["rope_scaling"] = RopeScaling(**d.get("rope_scaling", {}))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _as_tuple(x) -> tuple[int, ...]:
    if x is None:
        return ()
    if isinstance(x, (list, tuple)):
        return tuple(int(v) for v in x)
    return (int(x),)


def _rope_from_hf(cfg: Mapping[str, Any], source: str) -> tuple[float, RopeScaling]:
    """RoPE base and scaling from either transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling` pair."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = dict(cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    spec = params if params.get("rope_type", params.get("type")) not in (None, "default") else legacy
    rope_type = spec.get("rope_type", spec.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{source}: RoPE scaling type {rope_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if rope_type == "default":
        return float(theta), RopeScaling()
    return float(theta), RopeScaling(
        rope_type=rope_type,
        factor=float(spec.get("factor", 1.0)),
        low_freq_factor=float(spec.get("low_freq_factor", 1.0)),
        high_freq_factor=float(spec.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(
            spec.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 8192))),
    )


def from_hf_config(cfg: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config dict. `source` names the file in errors."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{source}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Llama 3.x, SmolLM2, Mistral without sliding window, "
            "Qwen2/Qwen2.5)")
    if any(k in cfg for k in ("num_local_experts", "num_experts", "moe_intermediate_size")):
        raise UnsupportedModelError(f"{source}: mixture-of-experts models are not supported")
    sliding = cfg.get("sliding_window")
    uses_sliding = cfg.get("use_sliding_window", model_type == "mistral")
    if sliding is not None and uses_sliding:
        raise UnsupportedModelError(
            f"{source}: sliding-window attention (sliding_window={sliding}) is not supported; "
            "only full attention is implemented")
    layer_types = cfg.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise UnsupportedModelError(f"{source}: layer_types {sorted(set(layer_types))} not supported; "
                                    "only full_attention")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{source}: hidden_act {act!r} not supported; only silu")
    if model_type == "llama" and cfg.get("mlp_bias"):
        raise UnsupportedModelError(f"{source}: mlp_bias=True is not supported")
    try:
        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        theta, scaling = _rope_from_hf(cfg, source)
        qkv_bias = model_type == "qwen2" or bool(cfg.get("attention_bias", False))
        if model_type == "llama" and cfg.get("attention_bias"):
            # Llama's attention_bias also puts a bias on o_proj, which we do not implement.
            raise UnsupportedModelError(f"{source}: attention_bias=True (Llama) is not supported")
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_tuple(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
        )
    except KeyError as e:
        raise ValueError(f"{source}: required field {e.args[0]!r} is missing") from None


def read_hf_config(path: str | Path) -> ModelConfig:
    """Read `config.json` (a file or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_hf_config(cfg, source=str(path))


def from_gguf_metadata(meta: Mapping[str, Any], source: str = "model.gguf") -> ModelConfig:
    """Build a ModelConfig from GGUF key/values (llama.cpp names, `{arch}.block_count` etc.)."""
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{source}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}")
    if f"{arch}.expert_count" in meta and int(meta[f"{arch}.expert_count"] or 0) > 0:
        raise UnsupportedModelError(f"{source}: mixture-of-experts models are not supported")

    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    try:
        hidden = int(get("embedding_length"))
        num_heads = int(get("attention.head_count"))
        vocab = int(get("vocab_size") or len(meta["tokenizer.ggml.tokens"]))
        head_dim = int(get("rope.dimension_count") or hidden // num_heads)
        scaling = RopeScaling()
        if get("rope.scaling.type") == "linear":
            scaling = RopeScaling(rope_type="linear", factor=float(get("rope.scaling.factor")))
        elif get("rope.scaling.type") not in (None, "none"):
            raise UnsupportedModelError(
                f"{source}: RoPE scaling {get('rope.scaling.type')!r} in GGUF is not supported")
        return ModelConfig(
            model_type=GGUF_ARCHITECTURES[arch],
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=int(get("block_count")),
            num_heads=num_heads,
            num_kv_heads=int(get("attention.head_count_kv") or num_heads),
            head_dim=head_dim,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            tie_word_embeddings=False,  # decided by the loader from the tensors present
            qkv_bias=arch == "qwen2",
            max_position_embeddings=int(get("context_length", 2048)),
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=_as_tuple(meta.get("tokenizer.ggml.eos_token_id")),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: GGUF metadata lacks a required field ({e})") from None


def rope_inverse_frequencies(cfg: ModelConfig) -> "list[float]":
    """Inverse frequencies of the rotary embedding, shape [head_dim // 2], with RoPE scaling applied."""
    half = cfg.head_dim // 2
    inv = [1.0 / (cfg.rope_theta ** (2 * i / cfg.head_dim)) for i in range(half)]
    s = cfg.rope_scaling
    if s.rope_type == "linear":
        return [f / s.factor for f in inv]
    if s.rope_type == "llama3":
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < high_wavelen:
                out.append(f)
            elif wavelen > low_wavelen:
                out.append(f / s.factor)
            else:
                smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                    s.high_freq_factor - s.low_freq_factor)
                out.append((1 - smooth) * f / s.factor + smooth * f)
        return out
    return inv
