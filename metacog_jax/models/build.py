"""Model, tokenizer and mesh from an experiment config (the `model` and `mesh` sections)."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from flax import nnx

from metacog_jax import sharding as sharding_lib
from metacog_jax.models import decoder
from metacog_jax.models.config import ModelConfig, RopeScaling
from metacog_jax.models.loading import LoadedModel, load_model, resolve


def mesh_from_config(c: ml_collections.ConfigDict):
    return sharding_lib.make_mesh(tuple(c.mesh.shape))


def rules_from_config(c: ml_collections.ConfigDict):
    return sharding_lib.normalize_rules(c.mesh.rules)


def random_model_config(fields: ml_collections.ConfigDict) -> ModelConfig:
    d = dict(fields.to_dict())
    d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
    d["rope_scaling"] = RopeScaling(**d.get("rope_scaling", {})) if "rope_scaling" in d else RopeScaling()
    return ModelConfig(**d)


def tokenizer_from_spec(spec: str):
    kind, path = resolve(spec)
    if kind == "gguf":
        from metacog_jax.models.gguf_file import read_gguf
        from metacog_jax.models.tokenizer import tokenizer_from_gguf

        return tokenizer_from_gguf(read_gguf(path), str(path))
    from metacog_jax.models.tokenizer import load_hf_tokenizer

    return load_hf_tokenizer(path)


def tokenizer_for_config(c: ml_collections.ConfigDict):
    """The config's tokenizer: the model's own, or `model.tokenizer` for the random test model."""
    return tokenizer_from_spec(c.model.tokenizer if c.model.name == "random" else c.model.name)


def attention_for(c: ml_collections.ConfigDict, mesh=None) -> str:
    """The config's model.attention resolved for the mesh's devices (default: this process's)."""
    from metacog_jax.models.attention_kernels import resolve

    platform = mesh.devices.flat[0].platform if mesh is not None else jax.local_devices()[0].platform
    return resolve(str(c.model.get("attention", "auto")), platform)


def _one_device_mesh():
    import jax

    # This process's own first device: after a multi-host join jax.devices()[0] may be another host's.
    return sharding_lib.make_mesh((1, 1, 1), devices=jax.local_devices()[:1])


def build_model(c: ml_collections.ConfigDict, mesh=None, tokenizer=None) -> LoadedModel:
    """Load (or randomly initialise, for model.name == "random") the config's model onto the mesh.

    `tokenizer`: one the caller already built with :func:`tokenizer_for_config` (so a stage builds it
    once); None builds it here."""
    rules = rules_from_config(c)
    if c.model.name == "random":
        cfg = random_model_config(c.model.random)
        dt, pdt = decoder.parse_dtype(c.model.dtype), decoder.parse_dtype(c.model.param_dtype)
        scan = bool(c.model.get("scan_layers", False))
        attention = attention_for(c, mesh)
        factory = lambda: decoder.Decoder(cfg, dtype=dt, param_dtype=pdt, rngs=nnx.Rngs(c.seed), scan_layers=scan,
                                          attention=attention)
        # Always initialised inside one jitted function (on a 1-device mesh when none is given), so the
        # random weights are bitwise the same with and without a mesh.
        model = sharding_lib.init_sharded(factory, mesh if mesh is not None else _one_device_mesh(), rules)
        tok = tokenizer if tokenizer is not None else tokenizer_for_config(c)
        if tok.vocab_size > cfg.vocab_size:
            raise ValueError(f"config model.random.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                             f"vocabulary ({tok.vocab_size}) from {c.model.tokenizer!r}")
        return LoadedModel(model, tok, cfg, "random")
    loaded = load_model(c.model.name, dtype=c.model.dtype, param_dtype=c.model.param_dtype, mesh=mesh, rules=rules,
                        with_tokenizer=tokenizer is None)
    loaded.model.attention = attention_for(c, mesh)
    if c.model.get("scan_layers", False):  # weights load per layer (their files' layout), then are stacked
        decoder.scan_layers_of(loaded.model)
        if mesh is not None:
            _, state = nnx.split(loaded.model)
            nnx.update(loaded.model, jax.device_put(state, sharding_lib.state_shardings(state, mesh, rules)))
    return loaded if tokenizer is None else dataclasses.replace(loaded, tokenizer=tokenizer)
