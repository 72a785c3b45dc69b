"""The architecture of every model preset, so that shapes are known offline (no hub, no config.json).

`ARCHITECTURES` maps a preset name of `metacog_jax.experiment_config.MODEL_PRESETS` to the
`ModelConfig` its published Hugging Face `config.json` gives (the Instruct checkpoints the presets load).
`metacog plan` builds abstract weights from it; loading real weights still reads the checkpoint's own
config, which wins. A plain dict: adding a family means adding its presets here (a test checks that every
preset has an entry and that the parameter counts match the published sizes).
"""

from __future__ import annotations

from metacog_jax.models.config import ModelConfig, RopeScaling

# Llama 3.1's RoPE scaling (config.json `rope_scaling`, rope_type llama3).
_LLAMA31_ROPE = RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)
_LLAMA31_TOKENS = dict(bos_token_id=128000, eos_token_ids=(128001, 128008, 128009), pad_token_id=None)
_QWEN25_TOKENS = dict(bos_token_id=151643, eos_token_ids=(151645,), pad_token_id=None)
_SMOLLM2_TOKENS = dict(bos_token_id=1, eos_token_ids=(2,), pad_token_id=2)


def _smollm2(hidden, intermediate, layers, heads, kv_heads, rope_theta) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                       rms_norm_eps=1e-5, rope_theta=rope_theta, tie_word_embeddings=True,
                       max_position_embeddings=8192, **_SMOLLM2_TOKENS)


def _qwen25(vocab, hidden, intermediate, layers, heads, kv_heads, tied) -> ModelConfig:
    return ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=tied, qkv_bias=True,
                       max_position_embeddings=32768, **_QWEN25_TOKENS)


def _llama31(hidden, intermediate, layers, heads) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=128256, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                       rope_theta=500000.0, rope_scaling=_LLAMA31_ROPE, tie_word_embeddings=False,
                       max_position_embeddings=131072, **_LLAMA31_TOKENS)


_SMOLLM2_135M = _smollm2(576, 1536, 30, 9, 3, 100000.0)

# The random test model of configs/tiny.py (experiment_config.tiny_model_fields).
_TINY = ModelConfig(model_type="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=10000.0,
                    tie_word_embeddings=True, max_position_embeddings=2048, **_SMOLLM2_TOKENS)

# preset name -> architecture (HF config.json of the preset's checkpoint).
ARCHITECTURES: dict[str, ModelConfig] = {
    "smollm2_135m_gguf": _SMOLLM2_135M,
    "smollm2_135m": _SMOLLM2_135M,
    "smollm2_360m": _smollm2(960, 2560, 32, 15, 5, 100000.0),
    "smollm2_1.7b": _smollm2(2048, 8192, 24, 32, 32, 130000.0),
    "qwen2.5_0.5b": _qwen25(151936, 896, 4864, 24, 14, 2, tied=True),
    "qwen2.5_1.5b": _qwen25(151936, 1536, 8960, 28, 12, 2, tied=True),
    "qwen2.5_7b": _qwen25(152064, 3584, 18944, 28, 28, 4, tied=False),
    "llama3.1_8b": _llama31(4096, 14336, 32, 32),
    "llama3.1_70b": _llama31(8192, 28672, 80, 64),
    "tiny": _TINY,
}


def preset_architecture(preset: str) -> ModelConfig:
    """The architecture of a model preset.

    Raises:
      KeyError: naming the preset and the presets that have one.
    """
    try:
        return ARCHITECTURES[preset]
    except KeyError:
        raise KeyError(f"model preset {preset!r} has no architecture in metacog_jax/models/architectures.py; "
                       f"known: {', '.join(ARCHITECTURES)}") from None


# -- Qwen3 (dense) and Gemma 3 (text decoder) ------------------------------------------------------------
_QWEN3_TOKENS = dict(bos_token_id=151643, eos_token_ids=(151645,), pad_token_id=None)
# Gemma 3: <bos> 2, <eos> 1 and <end_of_turn> 106 end a turn, <pad> 0.
_GEMMA3_TOKENS = dict(bos_token_id=2, eos_token_ids=(1, 106), pad_token_id=0)


def _qwen3(hidden, intermediate, layers, heads, tied) -> ModelConfig:
    return ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, tie_word_embeddings=tied, qk_norm=True,
                       max_position_embeddings=40960, **_QWEN3_TOKENS)


def _gemma3(vocab, hidden, intermediate, layers, heads, kv_heads, head_dim, scalar, window, scaled) -> ModelConfig:
    """Five local layers (sliding window, RoPE base 10k) to one global layer (base 1M; linear x8 above 1B)."""
    return ModelConfig(model_type="gemma3", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                       rms_norm_eps=1e-6, rope_theta=1000000.0,
                       rope_scaling=(RopeScaling(rope_type="linear", factor=8.0, original_max_position_embeddings=131072)
                                     if scaled else RopeScaling()),
                       tie_word_embeddings=True, max_position_embeddings=131072 if scaled else 32768,
                       qk_norm=True, norm_offset=1.0, sandwich_norms=True, scale_embeddings=True,
                       hidden_act="gelu_pytorch_tanh", query_pre_attn_scalar=scalar, sliding_window=window,
                       layer_types=tuple("sliding_attention" if (i + 1) % 6 else "full_attention"
                                         for i in range(layers)),
                       local_rope_theta=10000.0, **_GEMMA3_TOKENS)


ARCHITECTURES.update({
    "qwen3_0.6b": _qwen3(1024, 3072, 28, 16, tied=True),
    "qwen3_1.7b": _qwen3(2048, 6144, 28, 16, tied=True),
    "qwen3_4b": _qwen3(2560, 9728, 36, 32, tied=True),
    "qwen3_8b": _qwen3(4096, 12288, 36, 32, tied=False),
    "qwen3_14b": _qwen3(5120, 17408, 40, 40, tied=False),
    "qwen3_32b": _qwen3(5120, 25600, 64, 64, tied=False),
    "gemma3_1b": _gemma3(262144, 1152, 6912, 26, 4, 1, 256, 256, 512, scaled=False),
    "gemma3_4b": _gemma3(262208, 2560, 10240, 34, 8, 4, 256, 256, 1024, scaled=True),
    "gemma3_12b": _gemma3(262208, 3840, 15360, 48, 16, 8, 256, 256, 1024, scaled=True),
    # The 27B scales its queries by hidden / heads = 168, not by its head_dim (128).
    "gemma3_27b": _gemma3(262208, 5376, 21504, 62, 32, 16, 128, 168, 1024, scaled=True),
})
