"""Run checkpoints with orbax: async, every N steps, keep the newest K, restored onto target shardings.

A checkpoint holds the trainable parameters (LoRA adapters only for LoRA runs), the optimizer state and a
JSON record: the step (the data position: batches are a pure function of (seed, step)), the seed, and the
structure-affecting config (model architecture, per-layer vs stacked layout, LoRA targets and rank, task).
Initial weights (the model spec) are loaded separately and never written here.

A step directory that is incomplete or unreadable (a run killed while writing) is skipped with a warning
and the previous step is restored instead.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Layers as a list of modules ("layers/3/self_attn/...") or stacked on a leading axis ("layers/self_attn/..."
# [L, ...], model.scan_layers). Recorded in each checkpoint; a run whose layout differs restores it converted.
LAYOUTS = ("per_layer", "stacked")
_LAYER = re.compile(r"^((?:.*/)?layers)/(\d+)/(.*)$")  # ".../layers/<i>/rest" (optimizer state: "0/mu/layers/...")
_STACKED = re.compile(r"^((?:.*/)?layers)/(?!\d+/)(.*)$")


def layout_of(config) -> str:
    return "stacked" if config.model.get("scan_layers", False) else "per_layer"


def convert_named(named: dict[str, Any], layout: str, num_layers: int, stack=None, index=None) -> dict[str, Any]:
    """A to_named dict of one layout in the other: ".../layers/<i>/rest" entries stacked into ".../layers/rest"
    ([L, ...]) for layout "stacked", or split back for "per_layer". `stack(list)` and `index(leaf, i)` do
    the array work (default: jnp.stack and leaf[i]; the restore passes shape-only versions to build its
    target). Other entries pass through."""
    import jax.numpy as jnp

    stack = stack or jnp.stack
    index = index or (lambda leaf, i: leaf[i])
    out: dict[str, Any] = {}
    if layout == "stacked":
        groups: dict[tuple[str, str], dict[int, Any]] = {}
        for name, leaf in named.items():
            m = _LAYER.match(name)
            if m:
                groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = leaf
            else:
                out[name] = leaf
        for (head, rest), by_layer in groups.items():
            if sorted(by_layer) != list(range(num_layers)):
                raise ValueError(f"checkpoint entry {head}/*/{rest} exists for layers {sorted(by_layer)}, not all "
                                 f"{num_layers}: it cannot be stacked (LoRA on some layers only?)")
            out[f"{head}/{rest}"] = stack([by_layer[i] for i in range(num_layers)])
        return out
    for name, leaf in named.items():
        m = _STACKED.match(name)
        if m and not _LAYER.match(name):
            for i in range(num_layers):
                out[f"{m.group(1)}/{i}/{m.group(2)}"] = index(leaf, i)
        else:
            out[name] = leaf
    return out


def _abstract_converted(named_abstract: dict[str, Any], layout: str, num_layers: int) -> dict[str, Any]:
    """The restore target of a checkpoint in `layout`, built from this run's target in the other one: same
    dtypes, the layer axis added or removed from shapes and from the shardings' specs."""
    from jax.sharding import NamedSharding, PartitionSpec

    def reshard(leaf, spec_fn):
        sh = getattr(leaf, "sharding", None)
        if isinstance(sh, NamedSharding):
            return NamedSharding(sh.mesh, PartitionSpec(*spec_fn(tuple(sh.spec) + (None,) * (len(leaf.shape) - len(sh.spec)))))
        return sh

    def stack(leaves):
        first = leaves[0]
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype,
                                    sharding=reshard(first, lambda spec: (None, *spec)))

    def index(leaf, _):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=reshard(leaf, lambda spec: spec[1:]))

    return convert_named(named_abstract, layout, num_layers, stack=stack, index=index)


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def to_named(tree) -> dict[str, Any]:
    """Flatten a pytree to {"a/b/0/value": leaf}: readable names in the checkpoint, no nesting surprises."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        out["/".join(_key_name(k) for k in path) or "root"] = leaf
    return out


def from_named(named: dict[str, Any], like):
    """Inverse of to_named, using the structure of `like`."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    keys = ["/".join(_key_name(k) for k in path) or "root" for path, _ in flat]
    missing = [k for k in keys if k not in named]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} arrays, e.g. {missing[:3]}")
    return jax.tree_util.tree_unflatten(treedef, [named[k] for k in keys])


class RunCheckpoints:
    """Thin wrapper over ocp.CheckpointManager for (trainable, opt_state, meta)."""

    def __init__(self, directory: str | Path, keep: int = 2, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("trainable", "opt_state", "meta"))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, trainable, opt_state, meta: dict, force: bool = False) -> bool:
        args = ocp.args.Composite(trainable=ocp.args.StandardSave(to_named(trainable)),
                                  opt_state=ocp.args.StandardSave(to_named(opt_state)),
                                  meta=ocp.args.JsonSave(dict(meta, step=step)))
        return self.manager.save(step, args=args, force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, abstract_trainable, abstract_opt_state, expected_meta: dict):
        """(step, trainable, opt_state, meta) from the newest readable checkpoint, or None if there is none.

        `abstract_*` are pytrees of jax.ShapeDtypeStruct carrying the target shardings. Structure-affecting
        fields of `expected_meta` must match the checkpoint's, else ValueError naming the field.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
                check_compatible(meta, expected_meta, self.directory / str(step))
                targets = {"trainable": to_named(abstract_trainable), "opt_state": to_named(abstract_opt_state)}
                found, wanted = meta.get("layout", "per_layer"), expected_meta.get("layout", "per_layer")
                layers = int(expected_meta.get("num_layers") or 0)
                if found != wanted:  # restore in the checkpoint's layout, then convert to this run's
                    targets = {k: _abstract_converted(v, found, layers) for k, v in targets.items()}
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    **{k: ocp.args.StandardRestore(v) for k, v in targets.items()}))
                if found != wanted:
                    restored = {k: self._converted(restored[k], wanted, layers, like)
                                for k, like in (("trainable", abstract_trainable), ("opt_state", abstract_opt_state))}
                    log.info("checkpoint step %d converted from the %s to the %s layer layout", step, found, wanted)
            except ValueError:
                raise
            except Exception as e:  # incomplete or corrupt step directory
                aside = self.directory / f"{step}.unreadable-{int(time.time())}"
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); moved to %s, trying the previous "
                            "one", step, self.directory, type(e).__name__, str(e)[:200], aside.name)
                (self.directory / str(step)).rename(aside)  # so this run can write that step again
                self.manager.reload()
                continue
            return (step, from_named(restored["trainable"], abstract_trainable),
                    from_named(restored["opt_state"], abstract_opt_state), meta)
        return None


    @staticmethod
    def _converted(named, layout: str, num_layers: int, like):
        """Restored arrays converted to `layout`, placed on the target shardings of `like`."""
        converted = convert_named(named, layout, num_layers)
        want = to_named(like)
        placed = {k: jax.device_put(v, want[k].sharding) if getattr(want.get(k), "sharding", None) is not None
                  else v for k, v in converted.items()}
        return placed


# The layer layout is not among them: a checkpoint of the other layout is converted on restore.
STRUCTURE_KEYS = ("model", "lora", "trainable")


def structure_meta(model_config, config, lora_paths) -> dict:
    """What a checkpoint's arrays depend on; compared on restore so a mismatch fails clearly. LoRA paths
    are recorded per layer (`layers.3.self_attn.q_proj`) in either layout, so they compare across layouts."""
    lo = config.train.lora
    if layout_of(config) == "stacked":
        lora_paths = [p.replace("layers.", f"layers.{i}.", 1) if p.startswith("layers.") else p
                      for i in range(model_config.num_layers) for p in lora_paths]
        lora_paths = sorted(set(lora_paths), key=lora_paths.index)
    return {
        "model": model_config.to_json(),
        "layout": layout_of(config),
        "num_layers": model_config.num_layers,
        "lora": ({"rank": lo.rank, "alpha": lo.alpha, "targets": lo.targets, "paths": list(lora_paths)}
                 if lo.rank > 0 else None),
        "trainable": "lora" if lo.rank > 0 else "full",
        "task": config.train.task,
        "seed": config.seed,
        "model_spec": config.model.name,
    }


def _per_layer_order(paths) -> list[str]:
    """LoRA paths sorted by (layer, rest): the same list whichever layout produced them."""
    def key(p):
        m = re.match(r"^layers\.(\d+)\.(.*)$", p)
        return (0, int(m.group(1)), m.group(2)) if m else (1, 0, p)

    return sorted(paths, key=key)


def _comparable(key: str, value):
    if key == "lora" and isinstance(value, dict):
        return {**value, "paths": _per_layer_order(value.get("paths", []))}
    return value


def check_compatible(found: dict, expected: dict, where) -> None:
    for key in STRUCTURE_KEYS:
        if key in expected and _comparable(key, found.get(key)) != _comparable(key, expected[key]):
            raise ValueError(f"checkpoint {where} was written with {key}={found.get(key)!r}, but this run has "
                             f"{key}={expected[key]!r}; use a fresh workdir or the matching config")
