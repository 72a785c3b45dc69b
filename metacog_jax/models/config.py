"""Architecture description of a decoder LLM, read from a Hugging Face `config.json` or GGUF metadata.

One frozen dataclass covers the families we port: Llama (Llama 2/3.x, SmolLM2), Mistral (sliding-window
attention), Qwen2/Qwen2.5 (bias on the q/k/v projections), Qwen3 (RMSNorm on each query/key head) and the
text decoder of Gemma 3 (scaled embeddings, (1 + weight) norms around attention and MLP, GeGLU, local
sliding-window layers interleaved with global ones, each kind with its own RoPE). Anything we do not
implement fails here, before a single weight is read, with an error that lists what is supported.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3")
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
# Hugging Face model_type -> ours. Gemma 3's text-only checkpoints say gemma3_text; the multimodal ones say
# gemma3 and keep the decoder's settings in `text_config` (read by from_hf_config).
HF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                  "gemma3_text": "gemma3", "gemma3": "gemma3"}
# GGUF `general.architecture` -> our model_type (Mistral's GGUF files say llama).
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3"}
# Gemma 3 repeats five local (sliding-window) layers and one global layer.
GEMMA3_SLIDING_PATTERN = 6


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

    Family features (defaults are Llama's): `qk_norm` (Qwen3, Gemma 3: RMSNorm over each query and key
    head before RoPE), `norm_offset` (Gemma: norms scale by 1 + weight), `sandwich_norms` (Gemma: a norm
    after attention and after the MLP as well as before each), `scale_embeddings` (Gemma: token embeddings
    times sqrt(D)), `hidden_act` (silu, or gelu_pytorch_tanh for Gemma's GeGLU), `query_pre_attn_scalar`
    (attention scores scaled by its inverse square root; 0 = head_dim), `sliding_window` with `layer_types`
    (a query attends only to the `sliding_window` keys ending at its own slot on "sliding_attention"
    layers; empty `layer_types` = every layer full), `local_rope_theta` (RoPE base of the sliding layers,
    unscaled; 0 = the same RoPE as the full layers).
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
    qk_norm: bool = False
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    scale_embeddings: bool = False
    hidden_act: str = "silu"
    query_pre_attn_scalar: float = 0.0
    sliding_window: int = 0
    layer_types: tuple[str, ...] = ()
    local_rope_theta: float = 0.0

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
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(f"hidden_act {self.hidden_act!r} is not supported; supported: "
                                        f"{', '.join(SUPPORTED_ACTIVATIONS)}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise UnsupportedModelError(f"layer_types {bad} are not supported; supported: {', '.join(LAYER_TYPES)}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0, got {self.sliding_window}")
        if "sliding_attention" in self.layer_types and not self.sliding_window:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is 0")

    def is_sliding(self, layer: int) -> bool:
        """Whether layer `layer` attends through the sliding window."""
        return bool(self.layer_types) and self.layer_types[layer] == "sliding_attention"

    @property
    def has_sliding_layers(self) -> bool:
        return "sliding_attention" in self.layer_types

    @property
    def attention_scale(self) -> float:
        """Factor on the attention scores (the queries): 1/sqrt(query_pre_attn_scalar or head_dim)."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    # -- derived quantities -------------------------------------------------------------------------
    def num_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (self.num_heads + 2 * self.num_kv_heads) + self.num_heads * h * d
        if self.qkv_bias:
            attn += h * (self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * d * f + (4 if self.sandwich_norms else 2) * d + (2 * h if self.qk_norm else 0)
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
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["rope_scaling"] = RopeScaling(**d.get("rope_scaling", {}))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        d["layer_types"] = tuple(d.get("layer_types", ()))
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


def _rope_spec(spec: Mapping[str, Any], theta: float, default_max: int, source: str) -> tuple[float, RopeScaling]:
    """(base, scaling) of one RoPE parameter dict (rope_type/type, rope_theta, factor, ...)."""
    rope_type = spec.get("rope_type", spec.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{source}: RoPE scaling type {rope_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    theta = float(spec.get("rope_theta", theta))
    if rope_type == "default":
        return theta, RopeScaling()
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(spec.get("factor", 1.0)),
        low_freq_factor=float(spec.get("low_freq_factor", 1.0)),
        high_freq_factor=float(spec.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(spec.get("original_max_position_embeddings", default_max)),
    )


def _rope_from_hf(cfg: Mapping[str, Any], source: str, default_theta: float = 10000.0,
                  default_local_theta: float = 0.0) -> tuple[float, RopeScaling, float]:
    """(base, scaling) of the full-attention layers and the base of the sliding layers (0: the same RoPE),
    from transformers 5's `rope_parameters` (flat, or one dict per layer type as Gemma 3 writes it) or the
    older `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`)."""
    params = dict(cfg.get("rope_parameters") or {})
    default_max = cfg.get("max_position_embeddings", 8192)
    theta = cfg.get("rope_theta", default_theta)
    local_theta = float(cfg.get("rope_local_base_freq", default_local_theta))
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
        if local.get("rope_type", local.get("type", "default")) not in (None, "default"):
            raise UnsupportedModelError(f"{source}: RoPE scaling on sliding-window layers is not supported")
        local_theta = float(local.get("rope_theta", local_theta))
        theta, scaling = _rope_spec(full, theta, default_max, source)
        return theta, scaling, local_theta
    legacy = dict(cfg.get("rope_scaling") or {})
    spec = params if params.get("rope_type", params.get("type")) not in (None, "default") else legacy
    theta = params.get("rope_theta", theta)
    theta, scaling = _rope_spec({k: v for k, v in spec.items() if k != "rope_theta"}, theta, default_max, source)
    return theta, scaling, local_theta


# Gemma 3's config.json files on the hub list only what differs from transformers' defaults (the 4B's
# text_config names six fields), so the defaults of Gemma3TextConfig fill in the rest.
GEMMA3_TEXT_DEFAULTS = dict(
    vocab_size=262_208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=131_072, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    tie_word_embeddings=True, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, query_pre_attn_scalar=256,
    sliding_window=4096, sliding_window_pattern=GEMMA3_SLIDING_PATTERN, attention_bias=False)


def _text_decoder_config(cfg: Mapping[str, Any], source: str) -> tuple[str, dict]:
    """(our model_type, the decoder's HF config dict). A multimodal Gemma 3 checkpoint (model_type gemma3)
    keeps its text decoder's settings in `text_config`; the top level's token ids and tying fill gaps."""
    hf_type = cfg.get("model_type")
    if hf_type not in HF_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{source}: model_type {hf_type!r} is not supported; supported: "
            f"{', '.join(HF_MODEL_TYPES)} (Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5, Qwen3 dense, "
            "Gemma 3 text decoder)")
    ours = HF_MODEL_TYPES[hf_type]
    cfg = dict(cfg)
    if hf_type == "gemma3":
        text = dict(cfg.get("text_config") or {})
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
            if key not in text and key in cfg:
                text[key] = cfg[key]
        cfg = text
    if ours == "gemma3":
        cfg = {**GEMMA3_TEXT_DEFAULTS, **cfg}
    return ours, cfg


def _layer_types(model_type: str, cfg: Mapping[str, Any], num_layers: int) -> tuple[int, tuple[str, ...]]:
    """(sliding_window, layer_types) the way transformers decides them per family; () = all layers full."""
    window = int(cfg.get("sliding_window") or 0)
    given = cfg.get("layer_types")
    if model_type == "gemma3":
        pattern = int(cfg.get("sliding_window_pattern") or GEMMA3_SLIDING_PATTERN)
        types = given or ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    elif model_type == "mistral":
        types = given or ["sliding_attention"] * num_layers
    elif model_type in ("qwen2", "qwen3"):
        if not cfg.get("use_sliding_window", False):
            return 0, ()
        first = int(cfg.get("max_window_layers", num_layers))
        types = given or ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    else:
        types = given or []
    if not window or all(t == "full_attention" for t in types):
        return 0, ()
    return window, tuple(types)


def from_hf_config(cfg: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config dict. `source` names the file in errors."""
    model_type, cfg = _text_decoder_config(cfg, source)
    if any(k in cfg for k in ("num_local_experts", "num_experts", "moe_intermediate_size")):
        raise UnsupportedModelError(f"{source}: mixture-of-experts models are not supported")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedModelError(f"{source}: hidden_act {act!r} not supported; supported: "
                                    f"{', '.join(SUPPORTED_ACTIVATIONS)}")
    if model_type == "llama" and cfg.get("mlp_bias"):
        raise UnsupportedModelError(f"{source}: mlp_bias=True is not supported")
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if cfg.get(key) is not None:
            raise UnsupportedModelError(f"{source}: {key}={cfg[key]} (logit soft-capping) is not supported")
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"{source}: use_bidirectional_attention=True is not supported (causal only)")
    if model_type in ("llama", "qwen3", "gemma3") and cfg.get("attention_bias"):
        # Their attention_bias also puts a bias on o_proj, which we do not implement.
        raise UnsupportedModelError(f"{source}: attention_bias=True ({model_type}) is not supported")
    gemma = model_type == "gemma3"
    try:
        num_heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        num_layers = int(cfg["num_hidden_layers"])
        theta, scaling, local_theta = _rope_from_hf(cfg, source, default_theta=10000.0)
        window, layer_types = _layer_types(model_type, cfg, num_layers)
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
            head_dim=int(cfg.get("head_dim") or hidden // num_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", gemma)),
            qkv_bias=model_type == "qwen2" or (model_type == "mistral" and bool(cfg.get("attention_bias", False))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=_as_tuple(cfg.get("eos_token_id")),
            pad_token_id=cfg.get("pad_token_id"),
            qk_norm=model_type in ("qwen3", "gemma3"),
            norm_offset=1.0 if gemma else 0.0,
            sandwich_norms=gemma,
            scale_embeddings=gemma,
            hidden_act=act,
            query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar") or 0) if gemma else 0.0,
            sliding_window=window,
            layer_types=layer_types,
            local_rope_theta=local_theta if gemma else 0.0,
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
        head_dim = int(get("attention.key_length") or get("rope.dimension_count") or hidden // num_heads)
        model_type = GGUF_ARCHITECTURES[arch]
        num_layers = int(get("block_count"))
        gemma = model_type == "gemma3"
        window, layer_types = 0, ()
        if gemma:
            # llama.cpp writes the window but not the pattern (every sixth layer global, as in
            # transformers) nor the local RoPE base (10,000), nor query_pre_attn_scalar: head_dim, except
            # the 27B (hidden 5376), whose queries are scaled by hidden / heads (168) as llama.cpp does.
            window = int(get("attention.sliding_window") or GEMMA3_TEXT_DEFAULTS["sliding_window"])
            layer_types = tuple("sliding_attention" if (i + 1) % GEMMA3_SLIDING_PATTERN else "full_attention"
                                for i in range(num_layers))
        scaling = RopeScaling()
        if get("rope.scaling.type") == "linear":
            scaling = RopeScaling(rope_type="linear", factor=float(get("rope.scaling.factor")))
        elif get("rope.scaling.type") not in (None, "none"):
            raise UnsupportedModelError(
                f"{source}: RoPE scaling {get('rope.scaling.type')!r} in GGUF is not supported")
        return ModelConfig(
            model_type=model_type,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=int(get("feed_forward_length")),
            num_layers=num_layers,
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
            qk_norm=model_type in ("qwen3", "gemma3"),
            norm_offset=1.0 if gemma else 0.0,
            sandwich_norms=gemma,
            scale_embeddings=gemma,
            hidden_act="gelu_pytorch_tanh" if gemma else "silu",
            query_pre_attn_scalar=(float(hidden // num_heads if hidden == 5376 else head_dim) if gemma else 0.0),
            sliding_window=window,
            layer_types=layer_types,
            local_rope_theta=float(GEMMA3_TEXT_DEFAULTS["rope_local_base_freq"]) if gemma else 0.0,
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: GGUF metadata lacks a required field ({e})") from None


def rope_inverse_frequencies(cfg: ModelConfig, local: bool = False) -> "list[float]":
    """Inverse frequencies of the rotary embedding, shape [head_dim // 2], with RoPE scaling applied.
    local: those of the sliding-window layers (base `local_rope_theta`, unscaled, when it is set)."""
    half = cfg.head_dim // 2
    if local and cfg.local_rope_theta:
        return [1.0 / (cfg.local_rope_theta ** (2 * i / cfg.head_dim)) for i in range(half)]
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
