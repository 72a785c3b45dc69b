"""LoRA adapters on chosen projections, built on `nnx.LoRA`.

`apply_lora` wraps every `nnx.Linear` whose path (e.g. "layers.3.self_attn.q_proj") matches a regex in a
`ScaledLoRA`: y = base(x) + (alpha / rank) * dropout(x) @ A @ B, with B initialised to zero so training
starts from the base model. The adapter weights are `nnx.LoRAParam`; since LoRAParam is a subclass of
Param, the trainer filters gradients, optimizer state and checkpoints with `nnx.LoRAParam` so the base
never moves. `merge_lora` folds the adapters back into plain Linear kernels for export.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from metacog_jax.models.decoder import LOGICAL_AXES


class ScaledLoRA(nnx.LoRA):
    """nnx.LoRA with the usual alpha/rank scaling and input dropout on the low-rank branch."""

    def __init__(self, base: nnx.Linear, rank: int, alpha: float, dropout: float, *, rngs: nnx.Rngs):
        *lead, d_in, d_out = base.kernel.shape  # lead: [L] for a scanned model's stacked projection
        axes = tuple(base.kernel.get_metadata()[LOGICAL_AXES])
        lead_axes, (ax_in, ax_out) = axes[:-2], axes[-2:]
        # Adapters are trained: float32 storage (so their Adam moments are float32 too) whatever the frozen
        # base's dtype; the low-rank branch computes in float32 and is cast back to the activations' dtype.
        super().__init__(d_in, rank, d_out, base_module=base, dtype=base.dtype,
                         param_dtype=jnp.float32, rngs=rngs,
                         a_metadata={LOGICAL_AXES: (ax_in, None)}, b_metadata={LOGICAL_AXES: (None, ax_out)})
        if lead:  # one adapter per layer, each A drawn as an unstacked one is
            init = nnx.initializers.lecun_normal()
            keys = jax.random.split(rngs.params(), lead[0])
            self.lora_a = nnx.LoRAParam(jax.vmap(lambda k: init(k, (d_in, rank), jnp.float32))(keys),
                                        **{LOGICAL_AXES: (*lead_axes, ax_in, None)})
            self.lora_b = nnx.LoRAParam(jnp.zeros((*lead, rank, d_out), jnp.float32),
                                        **{LOGICAL_AXES: (*lead_axes, None, ax_out)})
        self.scale = alpha / rank
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x):
        h = self.dropout(x) if self.dropout is not None else x
        low = (h.astype(self.lora_a.dtype) @ self.lora_a[...]) @ self.lora_b[...]
        return self.base_module(x) + (self.scale * low).astype(x.dtype)


def _linear_paths(model: nnx.Module):
    for path, module in nnx.iter_graph(model):
        if isinstance(module, nnx.Linear):
            yield ".".join(str(p) for p in path), path, module


def _set_submodule(model: nnx.Module, path, value) -> None:
    parent = model
    for p in path[:-1]:
        parent = parent[p] if isinstance(p, int) else getattr(parent, p)
    if isinstance(path[-1], int):
        parent[path[-1]] = value
    else:
        setattr(parent, path[-1], value)


def _matches(model, pattern, name: str, targets: str) -> bool:
    """Whether the regex matches a linear's path. In a scanned model (one stacked module for all layers,
    `layers.self_attn.q_proj`) the regex is tried on each layer's own path (`layers.3.self_attn.q_proj`),
    as for the unscanned model; it must match all of them or none."""
    if not (getattr(model, "scan_layers", False) and name.startswith("layers.")):
        return bool(pattern.fullmatch(name))
    rest = name[len("layers."):]
    count = model.config.num_layers
    hits = [i for i in range(count) if pattern.fullmatch(f"layers.{i}.{rest}")]
    if hits and len(hits) < count:
        shown = f"{hits[0]}..{hits[-1]}" if hits == list(range(hits[0], hits[-1] + 1)) else ", ".join(map(str, hits))
        raise ValueError(f"LoRA target regex {targets!r} matches {rest} in layers {shown} of {count} only; with "
                         "model.scan_layers=True the layers are stacked and every layer gets the same adapters: "
                         "target all layers, or set model.scan_layers=False")
    return bool(hits)


def apply_lora(model: nnx.Module, targets: str, rank: int, alpha: float, dropout: float = 0.0,
               seed: int = 0) -> list[str]:
    """Wrap every Linear whose dotted path fully matches `targets` (a regex). Returns the wrapped paths.
    Fails when the regex matches nothing, listing a few available paths."""
    pattern = re.compile(targets)
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    matched = [(name, path, m) for name, path, m in _linear_paths(model) if _matches(model, pattern, name, targets)]
    if not matched:
        names = [name for name, _, _ in _linear_paths(model)]
        raise ValueError(f"LoRA target regex {targets!r} matches no linear layer; paths look like: "
                         f"{', '.join(names[:4])}, ...")
    for name, path, module in matched:
        _set_submodule(model, path, ScaledLoRA(module, rank, alpha, dropout, rngs=rngs))
    return [name for name, _, _ in matched]


def merge_lora(model: nnx.Module) -> nnx.Module:
    """Replace every ScaledLoRA by its base Linear with kernel + scale * A @ B (in place; returns model)."""
    found = [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, ScaledLoRA)]
    for path, m in found:
        base = m.base_module
        delta = m.scale * (m.lora_a[...].astype(jnp.float32) @ m.lora_b[...].astype(jnp.float32))
        base.kernel.set_value((base.kernel[...].astype(jnp.float32) + delta).astype(base.kernel[...].dtype))
        _set_submodule(model, path, base)
    return model


def lora_paths(model: nnx.Module) -> list[str]:
    return [".".join(map(str, p)) for p, m in nnx.iter_graph(model) if isinstance(m, ScaledLoRA)]


def count_params(state) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))
