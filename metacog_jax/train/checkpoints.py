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
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

LAYOUT = "per_layer"  # layers are a list of modules, not one stacked array (checked on restore)


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
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    trainable=ocp.args.StandardRestore(to_named(abstract_trainable)),
                    opt_state=ocp.args.StandardRestore(to_named(abstract_opt_state))))
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


STRUCTURE_KEYS = ("model", "layout", "lora", "trainable")


def structure_meta(model_config, config, lora_paths) -> dict:
    """What a checkpoint's arrays depend on; compared on restore so a mismatch fails clearly."""
    lo = config.train.lora
    return {
        "model": model_config.to_json(),
        "layout": LAYOUT,
        "lora": ({"rank": lo.rank, "alpha": lo.alpha, "targets": lo.targets, "paths": list(lora_paths)}
                 if lo.rank > 0 else None),
        "trainable": "lora" if lo.rank > 0 else "full",
        "task": config.train.task,
        "seed": config.seed,
        "model_spec": config.model.name,
    }


def check_compatible(found: dict, expected: dict, where) -> None:
    for key in STRUCTURE_KEYS:
        if key in expected and found.get(key) != expected[key]:
            raise ValueError(f"checkpoint {where} was written with {key}={found.get(key)!r}, but this run has "
                             f"{key}={expected[key]!r}; use a fresh workdir or the matching config")
