"""The training loop: sharded, compiled train step; LoRA or full fine-tuning; resumable.

The model is split into three NNX states: `trainable` (nnx.LoRAParam for LoRA runs, every nnx.Param for
full fine-tuning), `frozen` (the remaining parameters) and `other` (RNG counters and the like). The step is a
plain function of those states compiled with `jax.jit(in_shardings, out_shardings, donate_argnums)`;
gradients are taken with `jax.value_and_grad` w.r.t. `trainable` only, so the base model cannot move in a
LoRA run. Gradient accumulation scans over micro-batches and sums exact gradients of loss *sums*, so any
number of micro-batches gives the same update as one big batch.

Resuming is exact: the batch of step i is a pure function of (seed, i) and dropout keys are fold_in(seed,
step), so a checkpoint needs only the states and the step.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from metacog_jax import runtime
from metacog_jax import sharding as sharding_lib
from metacog_jax.models import lora as lora_lib
from metacog_jax.models.build import build_model, mesh_from_config, rules_from_config
from metacog_jax.train import losses
from metacog_jax.train.checkpoints import RunCheckpoints, structure_meta
from metacog_jax.train.metrics_log import MetricsLog, measure_matmul_peak

log = logging.getLogger(__name__)


class BatchSource(Protocol):
    """Batches as a pure function of the step: dict of numpy arrays [local_rows, T]."""

    def get(self, step: int) -> dict[str, np.ndarray]: ...


LOSS_KEYS = ("targets", "loss_weights", "task_ids", "decision_mask", "decision_value")
BATCH_KEYS = ("tokens", "positions", "segment_ids", "targets", "loss_weights", "task_ids", "decision_mask",
              "decision_value")


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to lr * min_lr_ratio, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=max(t.warmup_steps, 0),
        decay_steps=max(t.steps, t.warmup_steps + 1), end_value=t.lr * t.min_lr_ratio)
    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay))
    return optax.chain(*parts), schedule


def trainable_filter(config) -> Any:
    return nnx.LoRAParam if config.train.lora.rank > 0 else nnx.Param


def prepare_model(config, mesh, tokenizer=None):
    """Load the model onto the mesh and add LoRA adapters if configured. Returns (LoadedModel, lora paths).

    `tokenizer`: the config's tokenizer if the caller has built it already (else it is built here)."""
    loaded = build_model(config, mesh=mesh, tokenizer=tokenizer)
    paths = []
    lo = config.train.lora
    if lo.rank > 0:
        paths = lora_lib.apply_lora(loaded.model, lo.targets, lo.rank, lo.alpha, lo.dropout, seed=config.seed)
        if mesh is not None:  # place the new adapter weights on their shardings too
            rules = rules_from_config(config)
            _, state = nnx.split(loaded.model)
            sh = sharding_lib.state_shardings(state, mesh, rules)
            nnx.update(loaded.model, jax.device_put(state, sh))
    return loaded, paths


def split_model(model, config):
    return nnx.split(model, trainable_filter(config), nnx.Param, ...)


def _reseeded(state, key):
    """`state` with every dropout RNG stream restarted from `key` (the key folded with the stream's path, its
    count at 0): nnx.reseed's effect, as a new state instead of a mutation of the model's variables."""
    flat = []
    for path, var in nnx.to_flat_state(state):
        if isinstance(var, nnx.RngKey) and var.tag == "dropout":
            var = var.replace(jax.random.fold_in(key, zlib.crc32(repr(path).encode())))
        elif isinstance(var, nnx.RngCount) and var.tag == "dropout":
            var = var.replace(jnp.zeros_like(var.get_value()))
        flat.append((path, var))
    return nnx.from_flat_state(flat)


def _batch_shardings(mesh):
    spec = NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))
    return {k: spec for k in BATCH_KEYS}


def make_train_step(graphdef, config, tx, label_token_ids=None, label_values=None, attention_window: int = 0):
    """The un-jitted step: (trainable, opt_state, frozen, other, batch, step) -> (trainable, opt_state, stats).

    attention_window: tokens attend at most this far back (0: the whole row); see resolve_attention_window.
    """
    lc = config.train.loss
    brier_w = float(lc.brier)
    accum = int(config.train.grad_accum)
    dropout = config.train.lora.dropout > 0
    seed = int(config.seed)
    lab_ids = None if label_token_ids is None else jnp.asarray(label_token_ids, jnp.int32)
    lab_vals = None if label_values is None else jnp.asarray(label_values, jnp.float32)
    if brier_w > 0 and lab_ids is None:
        raise ValueError("config train.loss.brier > 0 needs a confidence scale whose labels differ in one "
                         "decision token (e.g. data.confidence_scale='0-9')")

    n_pos = int(config.train.loss_positions)
    remat = str(config.train.remat)
    chunk = int(config.train.loss_chunk)

    def micro_loss(trainable, frozen, other, mb, step, n_tokens, n_dec):
        if dropout:  # fresh dropout streams for this step, set in the state (no mutation across traces)
            other = _reseeded(other, jax.random.fold_in(jax.random.key(seed), step))
        model = nnx.merge(graphdef, trainable, frozen, other)
        hidden, _ = model(mb["tokens"], mb["positions"], segment_ids=mb["segment_ids"],
                          attention_window=attention_window, return_hidden=True, remat=remat)
        if n_pos:
            # The LM head and softmax run only where the loss does: the (at most n_pos) weighted positions
            # of each row, gathered first; the rest of the row carries no loss.
            idx = jnp.argsort(mb["loss_weights"] <= 0, axis=1, stable=True)[:, :n_pos]
            # Gathered as a one-hot matmul (exact: one 1 per row): on CPU XLA's gather and the scatter in
            # its gradient cost more than the logits they save; the matmul and its transpose are cheap.
            pick = jax.nn.one_hot(idx, hidden.shape[1], dtype=hidden.dtype)
            hidden = jnp.einsum("bpt,btd->bpd", pick, hidden)
            mb = {k: jnp.take_along_axis(v, idx, axis=1) for k, v in mb.items() if k in LOSS_KEYS}
        if chunk:
            terms = chunked_loss_terms(model.logits, hidden, {k: mb[k] for k in LOSS_KEYS}, chunk, brier_weight=brier_w,
                                       label_token_ids=lab_ids, label_values=lab_vals)
        else:
            terms = losses.loss_terms(model.logits(hidden), mb, brier_weight=brier_w, label_token_ids=lab_ids,
                                      label_values=lab_vals)
        objective = terms["ce_sum"] / n_tokens
        if brier_w > 0:
            objective = objective + brier_w * terms["brier_sum"] / n_dec
        return objective, terms

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step_fn(trainable, opt_state, frozen, other, batch, step):
        n_tokens = jnp.maximum(jnp.sum((batch["loss_weights"] > 0).astype(jnp.float32)), 1.0)
        n_dec = jnp.maximum(jnp.sum(batch["decision_mask"]), 1.0)
        if accum == 1:
            (_, terms), grads = grad_fn(trainable, frozen, other, batch, step, n_tokens, n_dec)
        else:
            micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

            def body(carry, mb):
                g_acc, t_acc = carry
                (_, t), g = grad_fn(trainable, frozen, other, mb, step, n_tokens, n_dec)
                return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, t_acc, t)), None

            zeros_g = jax.tree.map(jnp.zeros_like, trainable)
            _, t0 = jax.eval_shape(lambda: grad_fn(trainable, frozen, other,
                                                   jax.tree.map(lambda x: x[0], micro), step, n_tokens, n_dec))[0]
            zeros_t = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), t0)
            (grads, terms), _ = jax.lax.scan(body, (zeros_g, zeros_t), micro)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        stats = losses.metrics_from_terms(terms)
        stats["loss"] = losses.total_loss(terms, brier_w)
        stats["grad_norm"] = optax.tree.norm(grads)
        stats["n_tokens"] = terms["n_tokens"]
        return trainable, opt_state, stats

    return step_fn


def chunked_loss_terms(logits_fn: Callable, hidden: jax.Array, batch: dict, chunk: int, **loss_kw) -> dict:
    """losses.loss_terms(logits_fn(hidden), batch, **loss_kw), computed `chunk` positions at a time so the
    float32 logits [B, P, V] never exist whole, in the forward or the backward pass.

    hidden [B, P, D] (final-norm'd); batch: LOSS_KEYS arrays [B, P]. The positions are padded to a multiple
    of `chunk` with loss weight 0 and no decision (they add 0 to every term); a lax.scan runs over the
    chunks, each under jax.checkpoint, so the backward pass recomputes one chunk's logits at a time from
    its hidden states. Every term loss_terms returns is a sum (cross-entropy sums, token and decision
    counts, the Brier sum), so the chunks' terms add up to the unchunked ones.
    """
    b, p = hidden.shape[:2]
    n = -(-p // chunk)
    pad = n * chunk - p

    def chunks(a):  # [B, P, ...] -> [n, B, chunk, ...], zero-padded (weight 0, no decision)
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)

    xs = (chunks(hidden), {k: chunks(v) for k, v in batch.items()})

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def one(h, mb):
        return losses.loss_terms(logits_fn(h), mb, **loss_kw)

    def body(acc, x):
        return jax.tree.map(jnp.add, acc, one(*x)), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(one, *jax.tree.map(lambda a: a[0], xs)))
    terms, _ = jax.lax.scan(body, zeros, xs)
    return terms


def check_loss_positions(batch: dict, limit: int) -> None:
    """The step computes logits at no more than `limit` weighted positions per row; fail rather than drop."""
    if limit:
        most = int((batch["loss_weights"] > 0).sum(axis=1).max())
        if most > limit:
            raise ValueError(f"a batch row has {most} loss positions but config train.loss_positions={limit}; "
                             "raise it (or set 0 to compute logits everywhere)")


def longest_segment(segment_ids: np.ndarray) -> int:
    """Widest span (last slot - first slot + 1) of one non-zero segment id in any row of segment_ids
    [B, T] (0: padding). The attention mask joins equal ids, so a split example counts whole."""
    longest = 0
    for row in np.asarray(segment_ids):
        ids, first = np.unique(row, return_index=True)
        _, last = np.unique(row[::-1], return_index=True)
        spans = row.size - last - first
        if (ids != 0).any():
            longest = max(longest, int(spans[ids != 0].max()))
    return longest


def resolve_attention_window(config, batches: BatchSource) -> int:
    """config train.attention_window as a number of tokens: -1 becomes the longest example `batches` can
    produce (its `longest_example`; 0, the whole row, when the source does not say). A window set smaller
    than that longest example fails here, before any step (not at the step that first packs one)."""
    window = int(config.train.attention_window)
    longest = int(getattr(batches, "longest_example", 0) or 0)
    if window == -1:
        window = longest
    elif 0 < window < longest:
        raise ValueError(f"config train.attention_window={window} is shorter than the longest training example "
                         f"({longest} tokens); raise it, or set -1 (the longest example) or 0 (whole rows)")
    return window


def check_attention_window(batch: dict, window: int) -> None:
    """Packed examples must fit the attention window, or their first tokens would be cut off from attention."""
    if window:
        longest = longest_segment(batch["segment_ids"])
        if longest > window:
            raise ValueError(f"a batch holds an example of {longest} tokens but the attention window is {window} "
                             "(config train.attention_window); raise it, or set -1 (the longest example) or 0 "
                             "(whole rows)")


class _Preempted:
    """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


@dataclasses.dataclass
class TrainSetup:
    """Everything a run steps with: the model split into states placed on the mesh, the optimizer, and
    `step_fn(trainable, opt_state, frozen, other, batch, step) -> (trainable, opt_state, stats)`,
    jitted with the states' shardings and donating the trainable and optimizer states."""

    loaded: Any
    lora_paths: list[str]
    graphdef: Any
    trainable: Any
    frozen: Any
    other: Any
    opt_state: Any
    tx: optax.GradientTransformation
    schedule: Callable
    trainable_shardings: Any
    opt_shardings: Any
    step_fn: Callable


def setup_training(config: ml_collections.ConfigDict, mesh, label_token_ids=None,
                   label_values=None, attention_window: int = 0, tokenizer=None) -> TrainSetup:
    """Load the model onto `mesh`, split it, build the optimizer and the jitted train step (attention reaching
    back at most `attention_window` tokens, 0 = whole rows: see resolve_attention_window). `tokenizer`: as
    for prepare_model."""
    t = config.train
    loaded, lora_paths = prepare_model(config, mesh, tokenizer)
    graphdef, trainable, frozen, other = split_model(loaded.model, config)
    if t.lora.rank == 0:
        sharding_lib.assert_sufficiently_sharded(nnx.state(loaded.model), mesh)
    tx, schedule = make_optimizer(t)
    step_fn, (tr_sh, opt_sh, _, _, _, _) = jit_train_step(graphdef, config, tx, mesh, trainable, frozen, other,
                                                          label_token_ids, label_values, attention_window)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)
    return TrainSetup(loaded, lora_paths, graphdef, trainable, frozen, other, opt_state, tx, schedule,
                      tr_sh, opt_sh, step_fn)


def jit_train_step(graphdef, config, tx, mesh, trainable, frozen, other, label_token_ids=None, label_values=None,
                   attention_window: int = 0):
    """make_train_step jitted as a run steps with it: in/out shardings from the states' logical axes and
    the config's rules, the trainable and optimizer states donated.

    The states may be abstract (nnx States of ShapeDtypeStructs): `metacog plan` lowers the same function
    for a TPU topology. Returns (step_fn, in_shardings), in_shardings being (trainable, optimizer state,
    frozen, other, batch dict, step)."""
    rules = rules_from_config(config)
    tr_sh = sharding_lib.state_shardings(trainable, mesh, rules)
    fr_sh = sharding_lib.state_shardings(frozen, mesh, rules)
    ot_sh = sharding_lib.state_shardings(other, mesh, rules)
    # Moments are nnx Variables carrying the parameters' logical axes, so they shard like them.
    opt_sh = sharding_lib.state_shardings(jax.eval_shape(tx.init, trainable), mesh, rules)
    in_shardings = (tr_sh, opt_sh, fr_sh, ot_sh, _batch_shardings(mesh), None)
    step = make_train_step(graphdef, config, tx, label_token_ids, label_values, attention_window)

    def traced_under_mesh(*args):  # the model's activation constraints see the mesh and rules
        with sharding_lib.activation_context(mesh, rules):
            return step(*args)

    step_fn = jax.jit(traced_under_mesh, in_shardings=in_shardings, out_shardings=(tr_sh, opt_sh, None),
                      donate_argnums=(0, 1))
    return step_fn, in_shardings


def train(config: ml_collections.ConfigDict, workdir: str | Path, batches: BatchSource, *,
          label_token_ids=None, label_values=None, eval_fn: Callable | None = None,
          stop_after: int | None = None, progress: bool = True, tokenizer=None) -> dict:
    """Train for config.train.steps steps (resuming from workdir/checkpoints if present).

    `stop_after` ends this invocation after that many steps (tests use it to simulate an interruption).
    `tokenizer`: the config's tokenizer when the caller built it already for the batches (built once).
    Returns a summary dict; the final trainable state is saved as the last checkpoint.
    """
    workdir = Path(workdir)
    t = config.train
    # The CLI joins a multi-host run in runtime.start_process(); library callers (tests, notebooks,
    # scripts) may not have, and the mesh below needs the global device list. Idempotent: a no-op after it.
    runtime.maybe_initialize_distributed()
    mesh = mesh_from_config(config)
    sharding_lib.check_batch_divisible(t.batch_size, mesh)
    window = resolve_attention_window(config, batches)
    ts = setup_training(config, mesh, label_token_ids, label_values, window, tokenizer=tokenizer)
    loaded, lora_paths, graphdef, trainable, frozen, other, opt_state = (
        ts.loaded, ts.lora_paths, ts.graphdef, ts.trainable, ts.frozen, ts.other, ts.opt_state)
    schedule, step_fn, tr_sh, opt_sh = ts.schedule, ts.step_fn, ts.trainable_shardings, ts.opt_shardings

    meta = structure_meta(loaded.config, config, lora_paths)
    ckpt = RunCheckpoints(workdir / "checkpoints", keep=t.keep_checkpoints)
    start = 0
    restored = ckpt.restore_latest(
        sharding_lib.abstract_with_shardings(jax.eval_shape(lambda: trainable), tr_sh),
        sharding_lib.abstract_with_shardings(jax.eval_shape(lambda: opt_state), opt_sh), meta)
    if restored is not None:
        start, trainable, opt_state, _ = restored
        log.info("resumed from checkpoint step %d", start)
    peak = t.peak_flops or measure_matmul_peak()
    n_params = loaded.config.num_params()
    flops_factor = 3.0 if t.lora.rank == 0 else 2.0  # fwd+bwd (full) or fwd+activation grads (LoRA)
    metrics_log = MetricsLog(workdir / "train", enabled=jax.process_index() == 0)
    summary = {"start_step": start, "steps": t.steps, "trainable_params": lora_lib.count_params(trainable),
               "total_params": n_params, "lora_paths": len(lora_paths), "attention_window": window}
    end = t.steps if stop_after is None else min(t.steps, start + stop_after)
    bar = _progress(start, t.steps, progress and jax.process_index() == 0)
    last_stats = {}
    with _Preempted() as pre:
        step = start
        while step < end:
            t0 = time.perf_counter()
            local = batches.get(step)
            check_loss_positions(local, t.loss_positions)
            check_attention_window(local, window)
            batch = sharding_lib.shard_batch({k: local[k] for k in BATCH_KEYS}, mesh)
            trainable, opt_state, stats = step_fn(trainable, opt_state, frozen, other, batch, step)
            step += 1
            if step % t.log_every == 0 or step == end:
                stats = {k: float(v) for k, v in jax.device_get(stats).items()}
                dt = time.perf_counter() - t0
                b, tl = local["tokens"].shape
                tokens = b * tl * jax.process_count()
                flops = flops_factor * loaded.config.flops_per_token(tl) * tokens
                stats.update(step=step, lr=float(schedule(step - 1)), step_seconds=dt, tokens_per_s=tokens / dt,
                             mfu=flops / dt / (peak * jax.device_count()))
                metrics_log.write(step, stats)
                last_stats = stats
                bar.update(step, stats)
            if eval_fn is not None and t.eval_every and step % t.eval_every == 0:
                model = nnx.merge(graphdef, trainable, frozen, other)
                metrics_log.write(step, {f"eval_{k}": v for k, v in eval_fn(model).items()})
            if pre.flag or step % t.checkpoint_every == 0 or step == t.steps:
                ckpt.save(step, trainable, opt_state, meta, force=True)
            if pre.flag:
                break
    ckpt.close()
    metrics_log.close()
    bar.close()
    summary.update(end_step=step, preempted=pre.flag, last=last_stats)
    nnx.update(loaded.model, trainable)
    summary["model"] = loaded
    return summary


class _progress:
    """A tqdm bar with the loss in its postfix, or nothing when disabled."""

    def __init__(self, start, total, enabled):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
        self.pos = start

    def update(self, step, stats):
        if self.bar is not None:
            self.bar.update(step - self.pos)
            self.bar.set_postfix(loss=f"{stats['loss']:.4f}", tok_s=f"{stats['tokens_per_s']:.0f}")
        self.pos = step

    def close(self):
        if self.bar is not None:
            self.bar.close()


def restore_trained_model(config, workdir: str | Path, mesh=None):
    """The config's base model with the newest checkpoint of `workdir` applied (LoRA adapters or full
    weights). Errors name the workdir when there is no checkpoint or it does not fit the config."""
    workdir = Path(workdir)
    mesh = mesh if mesh is not None else mesh_from_config(config)
    loaded, lora_paths = prepare_model(config, mesh)
    graphdef, trainable, frozen, other = split_model(loaded.model, config)
    rules = rules_from_config(config)
    tr_sh = sharding_lib.state_shardings(trainable, mesh, rules)
    tx, _ = make_optimizer(config.train)
    opt_state = jax.eval_shape(tx.init, trainable)
    opt_abstract = sharding_lib.abstract_with_shardings(
        opt_state, sharding_lib.state_shardings(opt_state, mesh, rules))
    ckpt = RunCheckpoints(workdir / "checkpoints", keep=config.train.keep_checkpoints, async_save=False)
    if not ckpt.steps():
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}; run `metacog train` first")
    restored = ckpt.restore_latest(sharding_lib.abstract_with_shardings(jax.eval_shape(lambda: trainable), tr_sh),
                                   opt_abstract, structure_meta(loaded.config, config, lora_paths))
    ckpt.close()
    if restored is None:
        raise ValueError(f"no readable checkpoint in {workdir / 'checkpoints'}")
    step, trainable, _, _ = restored
    nnx.update(loaded.model, trainable)
    return loaded, step


def model_for_eval(config, run_workdir: str | Path):
    """(LoadedModel, checkpoint step): the base model for task 'none' (step 0), else the base model with
    the run's newest checkpoint applied and any LoRA adapters merged into the kernels."""
    if config.train.task == "none" or config.train.steps == 0:
        return build_model(config), 0
    loaded, step = restore_trained_model(config, run_workdir)
    # Adapters folded into the kernels: the same graph as the base model, so every condition reuses the
    # compiled scoring and sampling functions, and a forward pass costs no extra LoRA matmuls.
    lora_lib.merge_lora(loaded.model)
    return loaded, step
