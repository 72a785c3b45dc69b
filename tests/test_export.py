"""Export (`metacog export` = export.export_run): a LoRA run's adapters merged into the base weights,
loadable by transformers.

A few LoRA steps on the tiny random model (synthetic batches, tests/train_worker.py) make a run directory;
export_run writes it out from its checkpoint; transformers' AutoModelForCausalLM (torch) must then give the
logits of our unmerged LoRA model, and the exported kernels must be base + scale * A @ B, not the untrained
base. (tests/test_cli.py runs the `metacog export` command itself.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = f"{REPO / 'configs' / 'tiny.py'}:task=single,lora_rank=4,steps=3"
# A high rate so three steps move the adapters' B (zero at init) well away from zero.
OVERRIDES = ["train.lr=1e-2", "train.warmup_steps=1", "train.checkpoint_every=3"]


def _synthetic_batches(batch: int, length: int):
    spec = importlib.util.spec_from_file_location("train_worker", REPO / "tests" / "train_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SyntheticBatches(batch, length)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(config, trained LoRA model (unmerged), export directory)."""
    from metacog_jax.config_utils import load_config
    from metacog_jax.export import export_run
    from metacog_jax.train.trainer import train

    run = tmp_path_factory.mktemp("lora_run")
    config = load_config(SPEC, OVERRIDES)
    summary = train(config, run, _synthetic_batches(config.train.batch_size, 24), progress=False)
    assert summary["end_step"] == 3 and summary["lora_paths"] > 0
    out = export_run(config, run, run / "hf")  # restores the newest checkpoint, merges, writes
    assert out == run / "hf" and (out / "config.json").is_file()
    return config, summary["model"], out


def _padded_batch(vocab: int, lengths=(13, 5, 9), seed: int = 0):
    """Left-padded ids [B, T], mask [B, T] (1 = token), positions counting from each row's first token."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), 2, np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n:] = rng.integers(3, vocab, n)
        mask[i, t - n:] = 1
    return ids, mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def test_transformers_logits_match_our_lora_model(exported):
    import jax.numpy as jnp
    import torch
    import transformers

    from metacog_jax.models.build import build_model, mesh_from_config
    from metacog_jax.models.lora import lora_paths

    config, loaded, out = exported
    assert lora_paths(loaded.model), "the reference must be the unmerged LoRA model"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    ids, mask, pos = _padded_batch(loaded.config.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    ours, _ = loaded.model(jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32),
                           segment_ids=jnp.asarray(mask, jnp.int32))
    valid = mask.astype(bool)
    diff = np.abs(ref - np.asarray(ours))[valid]
    assert diff.max() <= 1e-4, f"max |logit diff| {diff.max():.2e}"
    # Not vacuous: the adapters moved the logits far more than the tolerance, so an export of the
    # untrained base would fail the check above.
    untrained = build_model(config, mesh=mesh_from_config(config)).model
    base_logits, _ = untrained(jnp.asarray(ids, jnp.int32), jnp.asarray(pos, jnp.int32),
                               segment_ids=jnp.asarray(mask, jnp.int32))
    assert np.abs(np.asarray(base_logits) - np.asarray(ours))[valid].max() > 1e-2


def test_exported_weights_are_base_plus_adapters(exported):
    from flax import nnx
    from safetensors.numpy import load_file

    from metacog_jax.models.build import build_model, mesh_from_config
    from metacog_jax.models.lora import ScaledLoRA
    from metacog_jax.models.weights import name_table

    config, loaded, out = exported
    tensors = load_file(str(out / "model.safetensors"))
    # The untrained base, initialised as a run does (on the config's mesh: a jitted init, which differs
    # in the last bit from an eager one).
    untrained_model = build_model(config, mesh=mesh_from_config(config)).model
    base = dict(nnx.to_flat_state(nnx.state(untrained_model, nnx.Param)))
    hf_name = {path: hf for path, hf, _, _ in name_table(loaded.config)}
    assert set(tensors) == set(hf_name.values())

    adapters = {tuple(path): m for path, m in nnx.iter_graph(loaded.model) if isinstance(m, ScaledLoRA)}
    assert len(adapters) == 7 * loaded.config.num_layers  # every linear layer of every block
    for path, module in adapters.items():
        name = hf_name[path + ("kernel",)]
        exported_kernel = tensors[name].T  # HF stores [out, in]
        untrained = np.asarray(base[path + ("kernel",)].get_value())
        delta = module.scale * np.asarray(module.lora_a[...]) @ np.asarray(module.lora_b[...])
        assert np.abs(exported_kernel - untrained).max() > 1e-4, f"{name}: adapters were not merged"
        np.testing.assert_allclose(exported_kernel, untrained + delta, atol=1e-6, err_msg=name)
    for path, name in hf_name.items():
        if path[:-1] not in adapters:  # embeddings and norms carry no adapter: unchanged
            np.testing.assert_array_equal(tensors[name], np.asarray(base[path].get_value()), err_msg=name)


def test_exported_tokenizer_matches(exported):
    import transformers

    from metacog_jax.models.build import tokenizer_for_config as tokenizer_for

    config, _, out = exported
    text = "What is 17 + 25? Answer with a number.\nConfidence: 0.85"
    assert (transformers.AutoTokenizer.from_pretrained(out).encode(text, add_special_tokens=False)
            == tokenizer_for(config).encode(text, add_special_tokens=False))
