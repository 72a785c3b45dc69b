"""Scan over layers (Decoder(scan_layers=True)): the same function as the plain loop of layers, in float32 on
CPU to 1e-5 — forward, loss and gradients under every remat policy, the KV cache with a shared prefix, LoRA —
and models and checkpoint states convert between the two layouts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metacog_jax.models import decoder
from metacog_jax.models import lora as lora_lib
from metacog_jax.models.config import ModelConfig

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4, num_kv_heads=2,
            head_dim=8, rms_norm_eps=1e-5)
CONFIGS = {
    "llama": ModelConfig(model_type="llama", **BASE),
    # every layer slides (the causal blocks skip keys before the window)
    "mistral_window": ModelConfig(model_type="mistral", **BASE, sliding_window=5,
                                  layer_types=("sliding_attention",) * 4),
    # Gemma 3: sliding and full layers alternate (own RoPE base), q/k norms, sandwich norms, tied
    "gemma3": ModelConfig(model_type="gemma3", **BASE, sliding_window=5, qk_norm=True, norm_offset=1.0,
                          sandwich_norms=True, scale_embeddings=True, hidden_act="gelu_pytorch_tanh",
                          tie_word_embeddings=True, local_rope_theta=10000.0, rope_theta=1e6,
                          layer_types=("sliding_attention", "full_attention", "sliding_attention",
                                       "full_attention")),
}


def pair_of(cfg):
    plain = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
    scanned = decoder.Decoder(cfg, rngs=nnx.Rngs(0), scan_layers=True)
    return plain, scanned


def batch(b=3, t=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, 97, (b, t)), jnp.int32)
    seg = np.ones((b, t), np.int32)
    seg[1, 8:] = 2  # two packed examples in row 1
    seg[2, 9:] = 0  # padding in row 2
    pos = np.concatenate([np.arange(8), np.arange(4)])[None].repeat(b, 0)
    pos[0], pos[2] = np.arange(t), np.arange(t)
    return tokens, jnp.asarray(pos, jnp.int32), jnp.asarray(seg)


def close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(np.abs(b).max())), rtol=1e-5, err_msg=what)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_scanned_layers_are_the_plain_loop_with_the_same_weights(name, monkeypatch):
    """Same random draws (the layers are created one by one, then stacked), same logits; causal blocks of 4
    so the block skipping under scan (the wider window of the two layer kinds) is exercised."""
    monkeypatch.setattr(decoder, "CAUSAL_BLOCK", 4)
    plain, scanned = pair_of(CONFIGS[name])
    layers = decoder.unstack_layers(scanned.layers)
    for i, layer in enumerate(layers):
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(layer)), nnx.to_flat_state(nnx.state(plain.layers[i]))):
            np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))
    tokens, pos, seg = batch()
    want, _ = plain(tokens, pos, segment_ids=seg)
    got, _ = scanned(tokens, pos, segment_ids=seg)
    real = np.asarray(seg) > 0  # padding rows attend to nothing: their (unused) outputs depend on skipped blocks
    close(np.asarray(got)[real], np.asarray(want)[real], name)


# Every remat policy on the Gemma-3-shaped model (it has every layer feature), the plain scan on Llama's.
@pytest.mark.parametrize("name, remat", [("llama", "none"), ("gemma3", "none"), ("gemma3", "matmuls"),
                                         ("gemma3", "full")])
def test_scan_and_remat_give_the_loop_loss_and_gradients(name, remat):
    plain, scanned = pair_of(CONFIGS[name])
    tokens, pos, seg = batch()
    target = jnp.roll(tokens, -1, axis=1)

    def loss_of(model, remat):
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(params):
            logits, _ = nnx.merge(graphdef, params)(tokens, pos, segment_ids=seg, remat=remat)
            logp = jax.nn.log_softmax(logits)
            return -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1) * (seg[..., None] > 0))

        return jax.jit(jax.value_and_grad(loss))(params)

    want_loss, want_grads = loss_of(plain, "none")
    got_loss, got_grads = loss_of(scanned, remat)
    close(got_loss, want_loss, "loss")
    got_layers = decoder.unstack_layers(nnx.merge(*nnx.split(scanned.layers)[:1], got_grads["layers"]))
    close(got_grads["embed_tokens"]["embedding"][...], want_grads["embed_tokens"]["embedding"][...], "embedding")
    for i, layer in enumerate(got_layers):
        for (path, g), (_, w) in zip(nnx.to_flat_state(nnx.state(layer)), nnx.to_flat_state(want_grads["layers"][i])):
            close(g.get_value(), w.get_value(), f"{name} remat={remat}: layer {i} {path}")


@pytest.mark.parametrize("name", ["mistral_window", "gemma3"])
def test_scanned_kv_cache_decodes_like_the_loop(name):
    """Prefill left-padded prompts, share the prefix among 2 continuations each, decode 6 tokens past the
    window: the stacked cache (written a layer slice at a time inside the scan) gives the loop's logits."""
    plain, scanned = pair_of(CONFIGS[name])
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 7)), jnp.int32)
    seg = jnp.asarray([[0, 0, 1, 1, 1, 1, 1], [1] * 7], jnp.int32)  # row 0 left-padded
    pos = jnp.maximum(jnp.cumsum(seg, axis=1) - 1, 0)
    outs = []
    for model in (plain, scanned):
        step = jax.jit(lambda tok, p, cache, m=model: m(tok, p, cache=cache))
        cache = decoder.KVCache.init(model.config, 2, 7, stacked=model.scan_layers)
        assert cache.stacked == model.scan_layers
        last, cache = model(tokens, pos, segment_ids=seg, cache=cache)
        last = last[:, -1]
        cache = cache.share_prefix(2, 6)
        tok = jnp.asarray([[3], [5], [7], [11]], jnp.int32)
        p = jnp.repeat(pos[:, -1:] + 1, 2, axis=0)
        logits = [np.asarray(last)]
        for k in range(6):
            out, cache = step(tok, p + k, cache)
            logits.append(np.asarray(out))
            tok = jnp.argmax(out, -1).astype(jnp.int32)
        outs.append(logits)
    for k, (want, got) in enumerate(zip(*outs)):
        close(got, want, f"{name}: step {k}")


def test_lora_under_scan_wraps_every_layer_or_fails_for_a_subset():
    cfg = CONFIGS["llama"]
    plain, scanned = pair_of(cfg)
    for model in (plain, scanned):
        paths = lora_lib.apply_lora(model, r"layers\.\d+\.self_attn\.(q|v)_proj", rank=2, alpha=4.0, seed=3)
        # B starts at zero; give it values so the adapters change the output
        for path, m in nnx.iter_graph(model):
            if isinstance(m, lora_lib.ScaledLoRA):
                m.lora_b.set_value(jnp.full(m.lora_b.shape, 0.05, m.lora_b.dtype))
    assert paths == ["layers.self_attn.q_proj", "layers.self_attn.v_proj"]
    assert nnx.state(scanned, nnx.LoRAParam)["layers"]["self_attn"]["q_proj"]["lora_a"].shape == (4, 32, 2)
    # the same adapter weights in both layouts: copy the plain model's A into the stacked ones
    for proj in ("q_proj", "v_proj"):
        a = jnp.stack([getattr(plain.layers[i].self_attn, proj).lora_a[...] for i in range(4)])
        getattr(scanned.layers.self_attn, proj).lora_a.set_value(a)
    tokens, pos, seg = batch()
    close(scanned(tokens, pos, segment_ids=seg)[0], plain(tokens, pos, segment_ids=seg)[0], "lora")
    lora_lib.merge_lora(plain)
    lora_lib.merge_lora(scanned)
    close(scanned(tokens, pos, segment_ids=seg)[0], plain(tokens, pos, segment_ids=seg)[0], "merged")

    _, other = pair_of(cfg)
    with pytest.raises(ValueError, match=r"layers 0\.\.1 of 4 only; with model.scan_layers"):
        lora_lib.apply_lora(other, r"layers\.[01]\.self_attn\.q_proj", rank=2, alpha=4.0)


def test_models_and_checkpoint_states_convert_between_layouts():
    cfg = CONFIGS["gemma3"]
    plain, scanned = pair_of(cfg)
    tokens, pos, seg = batch()
    want, _ = plain(tokens, pos, segment_ids=seg)
    state = nnx.to_pure_dict(nnx.state(plain, nnx.Param))
    stacked = decoder.scanned_state(state)
    assert stacked["layers"]["mlp"]["up_proj"]["kernel"].shape == (4, 32, 48)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(scanned, nnx.Param)))
    back = decoder.unscanned_state(stacked)
    jax.tree.map(np.testing.assert_array_equal, back, state)
    assert decoder.scanned_state(stacked) is stacked and decoder.unscanned_state(state) is state  # already there
    converted = decoder.scan_layers_of(plain)
    assert converted.scan_layers
    close(converted(tokens, pos, segment_ids=seg)[0], want, "scan_layers_of")
    close(decoder.unscan_layers_of(converted)(tokens, pos, segment_ids=seg)[0], want, "unscan_layers_of")
    with pytest.raises(ValueError, match="differ in structure"):
        layers = [decoder.DecoderLayer(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)),
                  decoder.DecoderLayer(dataclasses.replace(cfg, qk_norm=False), dtype=jnp.float32,
                                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))]
        decoder.stack_layers(layers)



class _Batches:
    """Batches as a pure function of the step: random tokens of the tiny model's vocabulary, all targets."""

    def get(self, step):
        rng = np.random.default_rng(step)
        toks = rng.integers(3, 500, (4, 16)).astype(np.int32)
        ones = np.ones((4, 16), np.float32)
        return dict(tokens=toks, positions=np.tile(np.arange(16, dtype=np.int32), (4, 1)),
                    segment_ids=ones.astype(np.int32), targets=np.roll(toks, -1, 1), loss_weights=ones,
                    task_ids=ones.astype(np.int32), decision_mask=0 * ones, decision_value=0 * ones)


def test_scanned_run_restores_in_either_layout_and_exports_per_layer(tmp_path):
    """A LoRA run with model.scan_layers=True checkpoints stacked adapters; evaluating the run with
    scan_layers=False restores them converted to the per-layer layout, and a per-layer run restores into a
    scanned model: the same merged model either way. The export of a scanned model writes per-layer tensors."""
    from metacog_jax.experiment_config import default_config
    from metacog_jax.models.loading import load_model
    from metacog_jax.models.weights import export_safetensors
    from metacog_jax.train import trainer

    def config(scan: bool):
        c = default_config()
        c.model.name, c.model.scan_layers, c.mesh.shape = "random", scan, (1, 1, 1)
        c.train.steps, c.train.batch_size, c.train.checkpoint_every, c.train.peak_flops = 2, 4, 1, 1e11
        c.train.lr, c.train.warmup_steps, c.train.lora.rank = 1e-2, 1, 4
        return c

    from metacog_jax.models.build import build_model
    from metacog_jax.train.checkpoints import RunCheckpoints

    tokens, pos, seg = batch()
    trainer.train(config(True), tmp_path, _Batches(), progress=False)
    ck = RunCheckpoints(tmp_path / "checkpoints", async_save=False)
    assert ck.read_meta(2)["layout"] == "stacked"
    logits = {}
    for scan in (True, False):
        model, step = trainer.model_for_eval(config(scan), tmp_path)
        assert step == 2 and model.model.scan_layers == scan
        logits[scan] = np.asarray(model.model(tokens, pos, segment_ids=seg)[0])
    close(logits[False], logits[True], "restored per layer vs stacked")
    base = build_model(config(True)).model  # training moved the adapters: the logits are not the base's
    assert not np.allclose(np.asarray(base(tokens, pos, segment_ids=seg)[0]), logits[True], atol=1e-4)

    out = export_safetensors(model.model, tmp_path / "export", model.config)
    again = load_model(str(out), with_tokenizer=False)
    assert not again.model.scan_layers
    close(np.asarray(again.model(tokens, pos, segment_ids=seg)[0]), logits[True], "export")


def test_checkpoint_names_convert_between_layouts():
    """Parameter and optimizer-state entries (the layer list anywhere in the name) stack and split back."""
    from metacog_jax.train.checkpoints import convert_named

    per_layer = {f"{head}layers/{i}/self_attn/q_proj/lora_a/value": np.full((3, 2), 10 * i + k)
                 for k, head in enumerate(("", "1/0/mu/", "1/0/nu/")) for i in range(4)}
    per_layer["1/0/count"] = np.zeros(())
    stacked = convert_named(per_layer, "stacked", 4)
    assert sorted(stacked) == ["1/0/count", "1/0/mu/layers/self_attn/q_proj/lora_a/value",
                               "1/0/nu/layers/self_attn/q_proj/lora_a/value", "layers/self_attn/q_proj/lora_a/value"]
    assert stacked["1/0/mu/layers/self_attn/q_proj/lora_a/value"].shape == (4, 3, 2)
    back = convert_named(stacked, "per_layer", 4)
    assert sorted(back) == sorted(per_layer)
    for k in per_layer:
        np.testing.assert_array_equal(back[k], per_layer[k])
    del per_layer["layers/3/self_attn/q_proj/lora_a/value"]
    with pytest.raises(ValueError, match=r"layers/\*/self_attn/q_proj/lora_a/value exists for layers \[0, 1, 2\]"):
        convert_named(per_layer, "stacked", 4)
