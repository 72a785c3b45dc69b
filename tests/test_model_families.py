"""Qwen3 and Gemma 3 beyond the safetensors parity of test_models.py: GGUF files of both families (written
here with the `gguf` package, llama.cpp's tensor names and conventions), and the text decoder of Gemma 3's
multimodal checkpoints (4B/12B/27B), in both layouts their weights are saved in.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch CPU)")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from metacog_jax.models import config as config_lib
from metacog_jax.models.loading import load_model
from metacog_jax.models.weights import name_table

VOCAB = 300
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256, bos_token_id=2,
            eos_token_id=1, pad_token_id=0)


def _random_hf(cls_cfg, **fields):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cls_cfg(**TINY, **fields)).float().eval()
    with torch.no_grad():  # norms start at 0 (Gemma) or 1: move them, or a mix-up of norms goes unseen
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _batch():
    rng = np.random.default_rng(0)
    lengths = [13, 8, 3]
    ids = np.zeros((3, 13), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, 13 - n:], mask[i, 13 - n:] = rng.integers(3, VOCAB, n), 1
    return ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def _torch_logits(model, ids, mask, pos):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))
    return out.logits.numpy()


def _our_logits(loaded, ids, mask, pos):
    logits, _ = loaded.model(jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32),
                             segment_ids=jnp.asarray(mask, jnp.int32))
    return np.asarray(logits)


def _max_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


def write_gguf(hf_model, path, arch: str):
    """The checkpoint as llama.cpp's converter writes it: its tensor names, [out, in] matrices, no
    output.weight when tied, Gemma's norms stored as 1 + weight; a minimal SentencePiece vocabulary."""
    cfg = config_lib.from_hf_config(hf_model.config.to_dict())
    state = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    if cfg.sliding_window:
        w.add_sliding_window(cfg.sliding_window)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("llama")
    tokens = ["<pad>", "<eos>", "<bos>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"▁t{i}" for i in range(VOCAB - len(tokens))]
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(VOCAB)])
    w.add_token_types([3, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    for _, hf, gg, _ in name_table(cfg):
        x = state[hf]
        if cfg.norm_offset and gg.endswith("norm.weight"):
            x = x + cfg.norm_offset
        w.add_tensor(gg, np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


GGUF_CASES = {
    # arch, config class, fields, whether transformers' own GGUF loader can express the file
    # transformers' GGUF reader takes no head size from a qwen3 file and uses its default, 128 (every real
    # Qwen3's): the tied case has it; the untied one has 24 (neither 128 nor hidden / heads), which only
    # our reader (attention.key_length) gets right, so it is compared with the checkpoint alone.
    "qwen3_tied": ("qwen3", "Qwen3Config", dict(num_hidden_layers=2, tie_word_embeddings=True, head_dim=128), True),
    "qwen3_untied_wide_heads": ("qwen3", "Qwen3Config",
                                dict(num_hidden_layers=2, tie_word_embeddings=False, head_dim=24), False),
    # Six layers: five local ones (window 4) and a global one, llama.cpp's fixed pattern; head_dim 256 =
    # query_pre_attn_scalar (what llama.cpp and transformers assume for a GGUF Gemma 3 below 27B).
    "gemma3": ("gemma3", "Gemma3TextConfig", dict(num_hidden_layers=6, head_dim=256, query_pre_attn_scalar=256,
                                                  sliding_window=4), True),
}


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_gguf_import_matches_the_checkpoint_and_transformers(case, tmp_path):
    arch, cls_name, fields, hf_reads_it = GGUF_CASES[case]
    hf = _random_hf(getattr(transformers, cls_name), **fields)
    path = write_gguf(hf, tmp_path / f"{case}.gguf", arch)
    ours = load_model(str(path), with_tokenizer=False)
    want = config_lib.from_hf_config(hf.config.to_dict())
    same = dict(max_position_embeddings=0, pad_token_id=None, rms_norm_eps=0.0)  # GGUF: eps as float32
    assert ours.config.replace(**same) == want.replace(**same)
    assert ours.config.rms_norm_eps == pytest.approx(want.rms_norm_eps)
    ids, mask, pos = _batch()
    mine = _our_logits(ours, ids, mask, pos)
    assert _max_diff(mine, _torch_logits(hf, ids, mask, pos), mask) <= 1e-4, case
    if arch == "gemma3":  # the whole load, tokenizer included (SentencePiece vocabulary)
        tok = load_model(str(path)).tokenizer
        enc = tok.encode("naïve")  # no such pieces: byte fallback
        assert enc[0] == 2 and tok.decode(enc[1:]) == "naïve" and "<0xC3>" in tok.convert_ids_to_tokens(enc)
    if hf_reads_it:
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
        assert _max_diff(mine, _torch_logits(ref, ids, mask, pos), mask) <= 1e-4, f"{case}: vs transformers GGUF"


def _multimodal_gemma3(path):
    text = dict(TINY, num_hidden_layers=2, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2,
                                    image_token_index=VOCAB - 1)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def test_multimodal_gemma3_checkpoint_loads_its_text_decoder(tmp_path):
    """A Gemma 3 4B/12B/27B-style checkpoint (Gemma3ForConditionalGeneration: text_config, vision tower):
    we load the language model alone and give the logits of the full model on text. Both layouts load:
    transformers saves the hub's `language_model.model.*`; a `model.language_model.*` one is made here."""
    from safetensors.numpy import load_file, save_file

    hf = _multimodal_gemma3(tmp_path / "hub")
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert cfg["model_type"] == "gemma3" and "text_config" in cfg
    ids, mask, pos = _batch()
    ref = _torch_logits(hf, ids, mask, pos)
    ours = load_model(str(tmp_path / "hub"), with_tokenizer=False)
    assert ours.config.model_type == "gemma3" and ours.config.tie_word_embeddings
    assert ours.config.layer_types == ("sliding_attention", "full_attention")
    assert _max_diff(_our_logits(ours, ids, mask, pos), ref, mask) <= 1e-4

    tensors = load_file(str(tmp_path / "hub" / "model.safetensors"))
    assert any(k.startswith("language_model.model.") for k in tensors)
    renamed = {k.replace("language_model.model.", "model.language_model.", 1): v for k, v in tensors.items()}
    (tmp_path / "v5").mkdir()
    save_file(renamed, str(tmp_path / "v5" / "model.safetensors"))
    (tmp_path / "v5" / "config.json").write_text(json.dumps(cfg))
    again = load_model(str(tmp_path / "v5"), with_tokenizer=False)
    assert _max_diff(_our_logits(again, ids, mask, pos), ref, mask) <= 1e-4


def test_checkpoint_without_a_text_decoder_names_what_it_looked_for(tmp_path):
    from safetensors.numpy import save_file

    from metacog_jax.models.weights import WeightLoadError

    hf = _random_hf(transformers.Qwen3Config, num_hidden_layers=1)
    hf.save_pretrained(tmp_path)
    save_file({"vision_tower.patch.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match="embed_tokens.weight"):
        load_model(str(tmp_path), with_tokenizer=False)


# Minimal chat templates in the two families' styles (not the published ones, which are long): Qwen3 opens
# the answer with an empty think block when thinking is off; Gemma has no system role (it prefixes the
# first user turn) and calls the assistant "model".
QWEN3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
GEMMA3_STYLE = (
    "{{ bos_token }}{% set first = '' %}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set messages = messages[1:] %}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_chat_templates_answer_without_thinking_and_mark_the_completion(smol_tokenizer):
    """Prompts are rendered with thinking off (Qwen3: an empty think block before the answer), and the text
    after an assistant turn is found for both families' templates, so completions can be marked."""
    import copy

    from metacog_jax.data.prompts import end_of_turn, prompt_text

    qwen = copy.deepcopy(smol_tokenizer)
    qwen.chat_template = QWEN3_STYLE
    text = prompt_text(qwen, "2+2?", system="Be brief.")
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert end_of_turn(qwen) == "<|im_end|>\n"

    gemma = copy.deepcopy(smol_tokenizer)
    gemma.chat_template = GEMMA3_STYLE
    text = prompt_text(gemma, "2+2?", system="Be brief.")
    assert "<start_of_turn>user\nBe brief.\n\n2+2?<end_of_turn>\n<start_of_turn>model\n" in text
    assert end_of_turn(gemma) == "<end_of_turn>\n"


# Published totals (billions; Gemma 3: the text decoder, without the 0.4B vision tower of 4B-27B).
PUBLISHED_B = {"qwen3_0.6b": 0.596, "qwen3_1.7b": 1.72, "qwen3_4b": 4.02, "qwen3_8b": 8.19, "qwen3_14b": 14.8,
               "qwen3_32b": 32.8, "gemma3_1b": 1.0, "gemma3_4b": 3.88, "gemma3_12b": 11.77, "gemma3_27b": 27.0}


def test_new_presets_have_their_published_sizes_and_meshes():
    from metacog_jax.experiment_config import MODEL_PRESETS
    from metacog_jax.models.architectures import ARCHITECTURES

    for name, size in PUBLISHED_B.items():
        assert name in MODEL_PRESETS, name
        arch = ARCHITECTURES[name]
        assert arch.num_params() / 1e9 == pytest.approx(size, rel=0.01), name
        tensor = MODEL_PRESETS[name][1][2]
        assert arch.num_kv_heads % tensor == 0, f"{name}: tensor axis {tensor} does not divide the kv heads"


def test_sparse_multimodal_config_reads_as_the_preset():
    """The hub's gemma-3-4b-it config.json names only what differs from transformers' defaults; read with
    those defaults it is the gemma3_4b preset's architecture."""
    from metacog_jax.models.architectures import ARCHITECTURES

    hub = {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999,
           "eoi_token_index": 256000, "eos_token_id": [1, 106], "image_token_index": 262144,
           "mm_tokens_per_image": 256, "model_type": "gemma3",
           "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                           "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                           "sliding_window": 1024},
           "vision_config": {"model_type": "siglip_vision_model"}}
    assert config_lib.from_hf_config(hub) == ARCHITECTURES["gemma3_4b"]
