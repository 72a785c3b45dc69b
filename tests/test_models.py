"""Parity of our NNX decoder with transformers (PyTorch) on tiny random checkpoints, offline.

Tolerance: max |logit diff| <= 1e-4 in float32 on a left-padded batch (only real positions compared).
The sliding-window variants use a window of WINDOW = 4 slots, shorter than the batch's longest row (11)
and than every generation, so each test crosses the window's edge.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the test extra (torch CPU)")
transformers = pytest.importorskip("transformers")

from metacog_jax.models import config as config_lib
from metacog_jax.models.loading import load_model
from metacog_jax.models.weights import WeightLoadError, export_safetensors
from metacog_jax.sampling import Sampler, SamplingParams

VOCAB = 49152  # SmolLM2's, so the real tokenizer can drive generation
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)

VARIANTS = {
    "llama_untied": ("llama", dict(tie_word_embeddings=False)),
    "llama_tied_llama3_rope": ("llama", dict(tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 1000000.0})),
    "mistral_no_window": ("mistral", dict(tie_word_embeddings=False, sliding_window=None, head_dim=16)),
    "mistral_window": ("mistral", dict(tie_word_embeddings=False, sliding_window=4)),
    # Qwen3: q/k norms; head_dim 24 is not hidden / heads (16), as in the real 0.6B-8B (128 vs 64-128).
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True, head_dim=24, rope_parameters={
        "rope_type": "default", "rope_theta": 1000000.0})),
    # The second layer slides (layers from max_window_layers on do), the first attends to everything.
    "qwen3_untied_window": ("qwen3", dict(tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
                                          max_window_layers=1)),
    # Gemma 3: a local layer (window 4, RoPE base 10k) then a global one (base 1M, linear scaling x8, as in
    # the 4B-27B), query_pre_attn_scalar 20 (not head_dim 24), GeGLU, (1 + w) sandwich norms, tied.
    "gemma3_tied": ("gemma3_text", dict(
        tie_word_embeddings=True, head_dim=24, sliding_window=4, query_pre_attn_scalar=20,
        layer_types=["sliding_attention", "full_attention"], rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}})),
}
WINDOW = 4


def make_hf_model(kind: str, extra: dict, path):
    cls_cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig, "qwen3": transformers.Qwen3Config,
               "gemma3_text": transformers.Gemma3TextConfig}[kind]
    cfg = cls_cfg(**COMMON, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    # Random biases too: a zero-initialised bias would hide a missing or transposed bias.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


def padded_batch():
    rng = np.random.default_rng(0)
    lengths = [11, 7, 3]
    t = max(lengths)
    ids = np.full((3, t), 2, np.int64)
    mask = np.zeros((3, t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(3, VOCAB, n)
        mask[i, t - n:] = 1
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return ids, mask, pos


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    kind, extra = VARIANTS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(kind, extra, path)
    ours = load_model(str(path), with_tokenizer=False)
    return request.param, hf, ours, path


def hf_logits(hf, ids, mask, pos):
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos))
    return out.logits.numpy()


def our_logits(ours, ids, mask, pos):
    logits, _ = ours.model(jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32),
                           segment_ids=jnp.asarray(mask, jnp.int32))
    return np.asarray(logits)


def assert_close_grads(a, b):
    """Gradients equal up to float32 summation order: within 2e-6 of the leaf's largest entry (Gemma's
    are ~10x Llama's: embeddings scaled by sqrt(D), four norms per layer) or 1e-4 relative."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=2e-6 * max(1.0, float(np.abs(b).max())), rtol=1e-4)


def test_logits_match_transformers_on_padded_batch(pair):
    name, hf, ours, _ = pair
    ids, mask, pos = padded_batch()
    diff = np.abs(hf_logits(hf, ids, mask, pos) - our_logits(ours, ids, mask, pos))[mask.astype(bool)]
    assert diff.max() <= 1e-4, f"{name}: max |diff| {diff.max():.2e}"


# The attention-blocking tests differentiate twice per variant; they run on one plain family and on the
# two sliding-window layouts (every layer; Gemma's alternation with its own RoPE), which cover the code.
BLOCK_VARIANTS = ["llama_untied", "mistral_window", "gemma3_tied"]


@pytest.mark.parametrize("pair", BLOCK_VARIANTS, indirect=True)
def test_causal_blocks_match_transformers_and_unblocked_gradients(pair, monkeypatch):
    """Without a cache, queries run in blocks of decoder.CAUSAL_BLOCK that skip the keys above the
    diagonal: same logits as transformers and the same gradients as one unblocked attention."""
    from flax import nnx

    from metacog_jax.models import decoder

    name, hf, ours, _ = pair
    ids, mask, pos = padded_batch()
    monkeypatch.setattr(decoder, "CAUSAL_BLOCK", 4)  # T = 11: blocks of 4, 4 and 3
    diff = np.abs(hf_logits(hf, ids, mask, pos) - our_logits(ours, ids, mask, pos))[mask.astype(bool)]
    assert diff.max() <= 1e-4, f"{name}: max |diff| {diff.max():.2e}"

    graphdef, state = nnx.split(ours.model)
    tok, p, seg = (jnp.asarray(a, jnp.int32) for a in (ids, pos, mask))

    def loss(state):
        logits, _ = nnx.merge(graphdef, state)(tok, p, segment_ids=seg)
        return jnp.sum(jnp.where(seg[..., None] > 0, jax.nn.log_softmax(logits), 0.0)[..., :50])

    blocked = jax.grad(loss)(state)
    monkeypatch.setattr(decoder, "CAUSAL_BLOCK", 0)  # one block
    whole = jax.grad(loss)(state)
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
        assert_close_grads(a, b)


@pytest.mark.parametrize("pair", ["llama_untied", "gemma3_tied"], indirect=True)
def test_attention_window_on_packed_rows(pair, monkeypatch):
    """attention_window >= the longest packed example changes nothing (logits and gradients equal whole-row
    attention) while the blocks skip keys before the window; a shorter window cuts attention inside an
    example, and the blocked computation still equals one unblocked pass under the same windowed mask."""
    from flax import nnx

    from metacog_jax.models import decoder

    name, _, ours, _ = pair
    lengths = [[5, 4, 5], [3, 6, 4]]  # two rows of 16: packed examples, then 2 padding slots
    seg = np.zeros((2, 16), np.int32)
    pos = np.zeros((2, 16), np.int32)
    for r, row in enumerate(lengths):
        at = 0
        for i, n in enumerate(row):
            seg[r, at:at + n], pos[r, at:at + n] = i + 1, np.arange(n)
            at += n
    tok = jnp.asarray(np.random.default_rng(0).integers(3, 500, (2, 16)), jnp.int32)
    seg, pos = jnp.asarray(seg), jnp.asarray(pos)
    graphdef, state = nnx.split(ours.model)

    def loss(state, window):
        logits, _ = nnx.merge(graphdef, state)(tok, pos, segment_ids=seg, attention_window=window)
        return jnp.sum(jnp.where(seg[..., None] > 0, jax.nn.log_softmax(logits), 0.0)[..., :50])

    def run(block, window):
        monkeypatch.setattr(decoder, "CAUSAL_BLOCK", block)
        return jax.jit(jax.value_and_grad(loss), static_argnums=1)(state, window)  # traced here, after the patch

    def assert_same(a, b):
        np.testing.assert_allclose(float(a[0]), float(b[0]), rtol=1e-6)
        for x, y in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
            assert_close_grads(x, y)

    assert decoder.window_start(8, 6, 4) == 0 and decoder.window_start(12, 6, 4) == 4
    whole = run(0, 0)
    assert_same(run(4, 6), whole)  # blocks of 4 from key 0, 0, 0 and 4: nothing the mask allows is lost
    short_blocked, short_whole = run(4, 3), run(0, 3)
    assert_same(short_blocked, short_whole)
    assert abs(float(short_whole[0]) - float(whole[0])) > 1e-3, f"{name}: a 3-token window changed nothing"
    with pytest.raises(ValueError, match="attention_window"):
        ours.model(tok, pos, cache=decoder.KVCache.init(ours.model.config, 2, 16), attention_window=4)


@pytest.mark.parametrize("pair", BLOCK_VARIANTS + ["qwen3_untied_window"], indirect=True)
def test_shared_prefix_cache_matches_repeated_cache(pair):
    """Decoding n continuations per prompt from a shared prefix (KVCache.share_prefix) gives the logits of
    decoding them from n repeated copies of the prefilled cache."""
    from metacog_jax.models.decoder import KVCache

    name, _, ours, _ = pair
    model = ours.model
    ids, mask, pos = (jnp.asarray(a, jnp.int32) for a in padded_batch())  # 3 left-padded prompts
    b, p = ids.shape
    n, steps = 2, 4
    outs = {}
    for mode in ("repeat", "share"):
        cache = KVCache.init(model.config, b, p + steps if mode == "repeat" else p)
        hidden, cache = model(ids, pos, segment_ids=mask, cache=cache, return_hidden=True)
        cache = cache.repeat(n) if mode == "repeat" else cache.share_prefix(n, steps)
        next_pos = jnp.repeat(pos[:, -1] + 1, n)
        tok = jnp.arange(b * n, dtype=jnp.int32) * 97 + 5  # different tokens per continuation
        logits = []
        for i in range(steps):
            out, cache = model(tok[:, None], (next_pos + i)[:, None], cache=cache)
            logits.append(np.asarray(out[:, 0]))
            tok = jnp.argmax(out[:, 0], axis=-1).astype(jnp.int32)
        outs[mode] = np.stack(logits)
    np.testing.assert_allclose(outs["share"], outs["repeat"], atol=1e-4, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("pair", ["mistral_window", "qwen3_untied_window", "gemma3_tied"], indirect=True)
def test_kv_cache_and_one_pass_scorer_match_no_cache_forward_across_window(pair):
    """Past the sliding window's edge, the sampler's path (left-padded prompts prefilled into a cache that
    n continuations then share, decoded a token at a time) and the one-pass trie scorer give what a plain
    forward over each whole sequence gives."""
    from metacog_jax.evaluation.scoring import label_logprobs
    from metacog_jax.models.decoder import KVCache

    from flax import nnx

    name, _, ours, _ = pair
    model = ours.model
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda state, tok, pos, cache: nnx.merge(graphdef, state)(tok, pos, cache=cache))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (9, 6)]  # longer than the window (4)
    n, steps = 2, 6
    conts = rng.integers(3, VOCAB, (len(prompts) * n, steps))

    def plain_logits(seqs):  # [len(seqs), T, V]: one pass, no cache, rows right-padded (causal: no effect)
        t = max(map(len, seqs))
        ids = np.asarray([sq + [2] * (t - len(sq)) for sq in seqs], np.int32)
        seg = np.asarray([[1] * len(sq) + [0] * (t - len(sq)) for sq in seqs], np.int32)
        logits, _ = model(jnp.asarray(ids), jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), ids.shape),
                          segment_ids=jnp.asarray(seg))
        return np.asarray(logits)

    p = max(map(len, prompts))
    ids = np.full((len(prompts), p), 2, np.int32)
    seg = np.zeros_like(ids)
    for i, pr in enumerate(prompts):
        ids[i, p - len(pr):], seg[i, p - len(pr):] = pr, 1
    pos = np.maximum(np.cumsum(seg, 1) - 1, 0)
    _, cache = model(jnp.asarray(ids), jnp.asarray(pos, jnp.int32), segment_ids=jnp.asarray(seg),
                     cache=KVCache.init(model.config, len(prompts), p))
    cache = cache.share_prefix(n, steps)
    next_pos = np.repeat([len(pr) for pr in prompts], n)
    whole = plain_logits([prompts[row // n] + conts[row].tolist() for row in range(len(conts))])
    for k in range(steps):
        out, cache = step(state, jnp.asarray(conts[:, k:k + 1], jnp.int32),
                          jnp.asarray(next_pos + k, jnp.int32)[:, None], cache)
        for row in range(len(conts)):
            np.testing.assert_allclose(np.asarray(out[row, 0]), whole[row, next_pos[row] + k], atol=1e-4,
                                       err_msg=f"{name}: decode step {k}, row {row}")

    labels = [[11, 12, 13, 14], [11, 12, 15], [16, 17]]  # a trie: two labels share their first two tokens
    got = label_logprobs(model, prompts, labels, batch_size=2, pad_id=2)
    logp = jax.nn.log_softmax(plain_logits([pr + lab for pr in prompts for lab in labels]), axis=-1)
    for i, pr in enumerate(prompts):
        for j, lab in enumerate(labels):
            row = logp[i * len(labels) + j]
            want = sum(float(row[len(pr) - 1 + s, t]) for s, t in enumerate(lab))
            assert abs(float(got[i, j]) - want) <= 1e-4, f"{name}: prompt {i}, label {j}: {got[i, j]} vs {want}"


def test_config_read_from_config_json(pair):
    name, hf, ours, path = pair
    cfg = ours.config
    assert cfg.num_layers == 2 and cfg.num_kv_heads == 2
    assert cfg.head_dim == (getattr(hf.config, "head_dim", None) or 16)
    assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
    assert cfg.qkv_bias == (name.startswith("qwen2"))
    assert cfg.qk_norm == name.startswith(("qwen3", "gemma3"))
    if "llama3" in name:
        assert cfg.rope_scaling.rope_type == "llama3" and cfg.rope_theta == 500000.0
    expected_types = {"mistral_window": ("sliding_attention",) * 2,
                      "qwen3_untied_window": ("full_attention", "sliding_attention"),
                      "gemma3_tied": ("sliding_attention", "full_attention")}.get(name, ())
    assert cfg.layer_types == expected_types and cfg.sliding_window == (WINDOW if expected_types else 0)
    if name.startswith("gemma3"):
        assert (cfg.rope_theta, cfg.local_rope_theta, cfg.rope_scaling.rope_type) == (1e6, 1e4, "linear")
        assert cfg.attention_scale == 20 ** -0.5 and cfg.hidden_act == "gelu_pytorch_tanh"


def test_greedy_generation_matches_transformers(pair, smol_tokenizer):
    name, hf, ours, _ = pair
    sampler = Sampler(ours.model, smol_tokenizer, batch_size=4)
    prompts = [[5, 17, 300, 4000, 25], [9, 8, 7, 6, 5, 4, 3, 1000, 20000, 33]]
    gen = sampler.generate(prompts, SamplingParams(max_new_tokens=20, temperature=0.0), jax.random.key(0))
    for prompt, row in zip(prompts, gen.completions):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=20, do_sample=False, eos_token_id=list(sampler.stop_ids),
                              pad_token_id=2)[0, len(prompt):].tolist()
        ref = [t for t in ref if t not in sampler.stop_ids]
        assert row[0].token_ids == ref[:len(row[0].token_ids)] and len(row[0].token_ids) == len(ref), name


def test_round_trip_export_loads_in_transformers(pair, tmp_path):
    name, hf, ours, _ = pair
    out = export_safetensors(ours.model, tmp_path / "export", ours.config)
    again = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids, mask, pos = padded_batch()
    diff = np.abs(hf_logits(again, ids, mask, pos) - our_logits(ours, ids, mask, pos))[mask.astype(bool)]
    assert diff.max() <= 1e-4, f"{name}: round trip max |diff| {diff.max():.2e}"


def test_sharded_safetensors_with_index(tmp_path):
    hf = make_hf_model("llama", dict(tie_word_embeddings=False), tmp_path / "src")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="1MB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    ours = load_model(str(tmp_path / "sharded"), with_tokenizer=False)
    ids, mask, pos = padded_batch()
    diff = np.abs(hf_logits(hf, ids, mask, pos) - our_logits(ours, ids, mask, pos))[mask.astype(bool)]
    assert diff.max() <= 1e-4


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_bfloat16_compute_is_close_to_float32(tmp_path, tied):
    make_hf_model("llama", dict(tie_word_embeddings=tied), tmp_path)
    f32 = load_model(str(tmp_path), with_tokenizer=False)
    bf16 = load_model(str(tmp_path), dtype="bfloat16", param_dtype="bfloat16", with_tokenizer=False)
    ids, mask, pos = padded_batch()
    a, b = our_logits(f32, ids, mask, pos), our_logits(bf16, ids, mask, pos)
    assert b.dtype == np.float32  # logits are always returned in float32
    assert np.abs(a - b)[mask.astype(bool)].max() < 0.05
    leaf = bf16.model.layers[0].self_attn.q_proj.kernel[...]
    assert leaf.dtype == jnp.bfloat16

    # Every matmul of the bfloat16 forward sums in float32 (on CPU this is also what reaches XLA's
    # bfloat16 matrix units); the projections cast the sum back to bfloat16.
    from flax import nnx

    graphdef, state = nnx.split(bf16.model)
    tok, p = jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32)
    jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(tok, p)[0])(state)

    def dots(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for v in eqn.params.values():
                if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                    yield from dots(v.jaxpr)
                elif hasattr(v, "eqns"):
                    yield from dots(v)

    found = [e for e in dots(jaxpr.jaxpr) if e.invars[0].aval.dtype == jnp.bfloat16]
    assert len(found) >= 7 * 2 + 1  # the seven projections of each of the two layers, and the logits
    assert all(e.params["preferred_element_type"] == jnp.float32 for e in found), \
        [(e.invars[0].aval, e.params["preferred_element_type"]) for e in found]

    # So do both gradient matmuls of a projection, on bfloat16 operands (not float32 copies of them).
    proj_def, proj_state = nnx.split(bf16.model.layers[0].mlp.gate_proj)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 64)), jnp.bfloat16)
    grad = jax.grad(lambda st, x: jnp.sum(nnx.merge(proj_def, st)(x).astype(jnp.float32) ** 2), argnums=(0, 1))
    found = list(dots(jax.make_jaxpr(grad)(proj_state, x).jaxpr))
    assert len(found) == 3, found  # forward, input gradient, weight gradient
    for e in found:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
        assert e.params["preferred_element_type"] == jnp.float32, e

    # And the logits (a tied embedding's too), whose gradient is close to float32's.
    def logits_grad(model):
        gd, st = nnx.split(model)
        h = jnp.asarray(np.random.default_rng(2).standard_normal((3, 64)), jnp.float32)
        return jax.grad(lambda st, h: jnp.sum(jax.nn.log_softmax(nnx.merge(gd, st).logits(h))[:, 5]),
                        argnums=(0, 1))(st, h), st

    (g16, h16), st16 = logits_grad(bf16.model)
    (g32, h32), _ = logits_grad(f32.model)
    assert np.abs(np.asarray(h16, np.float32) - np.asarray(h32)).max() < 0.02 * np.abs(h32).max()
    found = list(dots(jax.make_jaxpr(lambda st: logits_grad(nnx.merge(nnx.graphdef(bf16.model), st))[0])(
        st16).jaxpr))
    assert len(found) == 3, found
    for e in found:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16] * 2, e
        assert e.params["preferred_element_type"] == jnp.float32, e


# -- bad input ------------------------------------------------------------------------------------------
def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="unknown model"):
        load_model("not-a-model-name")


def test_corrupt_safetensors_names_the_file(tmp_path):
    make_hf_model("llama", dict(tie_word_embeddings=False), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightLoadError, match="model.safetensors"):
        load_model(str(tmp_path), with_tokenizer=False)


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(config_lib.UnsupportedModelError, match="llama, mistral, qwen2"):
        load_model(str(tmp_path), with_tokenizer=False)


@pytest.mark.parametrize("patch, message", [
    ({"model_type": "gemma3_text", "final_logit_softcapping": 30.0}, "soft-capping"),
    ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "bidirectional"),
    ({"model_type": "qwen3", "attention_bias": True}, "attention_bias"),
    ({"model_type": "gemma3_text", "rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0},
                                                        "full_attention": {"rope_type": "default"}}}, "sliding"),
    ({"model_type": "llama", "num_local_experts": 8}, "mixture-of-experts"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
])
def test_unsupported_features_fail_clearly(patch, message):
    cfg = dict(COMMON, **patch)
    with pytest.raises(config_lib.UnsupportedModelError, match=message):
        config_lib.from_hf_config(cfg)


def test_config_weights_shape_mismatch_names_tensor(tmp_path):
    make_hf_model("llama", dict(tie_word_embeddings=False), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError, match=r"mlp\.gate_proj\.weight.*\(128, 64\).*\(96, 64\)"):
        load_model(str(tmp_path), with_tokenizer=False)
