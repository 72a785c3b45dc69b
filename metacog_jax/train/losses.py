"""Training losses for the single-question and pairwise tasks.

A batch (see data/batching.py) carries, per position t of [B, T]: `targets` (the next token),
`loss_weights` (0 on the prompt; task weight x role weight on the completion), `task_ids` (0 none,
1 single, 2 pairwise, 3 replay), and for the optional Brier ablation `decision_mask` / `decision_value` (the position
whose target is the confidence label's decision token, and the target probability y there).

The token loss is sum_t w_t CE_t / sum_t [w_t > 0]: weighted cross-entropy normalised by the number of
completion tokens, so weights trade roles off against each other without changing the loss scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TASK_NAMES = {1: "single", 2: "pairwise", 3: "replay"}


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log p(target) per position: logits [B, T, V] float32, targets [B, T] int -> [B, T]."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - picked


def brier_on_labels(logits: jax.Array, decision_mask: jax.Array, decision_value: jax.Array,
                    label_token_ids: jax.Array, label_values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sum_k p_k (y - v_k)^2 at decision positions, p renormalised over the scale's decision tokens.

    label_token_ids [L] int, label_values [L] in [0, 1]. Returns (sum over positions, number of positions).
    """
    label_logits = jnp.take(logits, label_token_ids, axis=-1)  # [B, T, L]
    p = jax.nn.softmax(label_logits, axis=-1)
    per_pos = jnp.sum(p * (decision_value[..., None] - label_values) ** 2, axis=-1)
    return jnp.sum(per_pos * decision_mask), jnp.sum(decision_mask)


def loss_terms(logits: jax.Array, batch: dict, *, brier_weight: float = 0.0,
               label_token_ids: jax.Array | None = None, label_values: jax.Array | None = None) -> dict:
    """Sums (not means) of every loss term over the batch, so micro-batches can be added up exactly.

    Returns a dict of scalars: ce_sum, n_tokens, per-task ce sums and counts, brier_sum, n_decisions.
    """
    ce = token_cross_entropy(logits, batch["targets"])
    w = batch["loss_weights"]
    active = (w > 0).astype(jnp.float32)
    out = {"ce_sum": jnp.sum(ce * w), "n_tokens": jnp.sum(active)}
    for tid, name in TASK_NAMES.items():
        sel = active * (batch["task_ids"] == tid)
        out[f"{name}_ce_sum"] = jnp.sum(ce * sel)
        out[f"{name}_tokens"] = jnp.sum(sel)
    if brier_weight > 0:
        b, n = brier_on_labels(logits, batch["decision_mask"], batch["decision_value"], label_token_ids,
                               label_values)
    else:
        b, n = jnp.zeros(()), jnp.zeros(())
    out["brier_sum"], out["n_decisions"] = b, n
    return out


def total_loss(terms: dict, brier_weight: float = 0.0) -> jax.Array:
    """Scalar objective from summed terms."""
    loss = terms["ce_sum"] / jnp.maximum(terms["n_tokens"], 1.0)
    if brier_weight > 0:
        loss = loss + brier_weight * terms["brier_sum"] / jnp.maximum(terms["n_decisions"], 1.0)
    return loss


def metrics_from_terms(terms: dict) -> dict:
    """Per-task mean cross-entropies for logging (NaN-free: 0 when a task is absent)."""
    out = {"loss_ce": terms["ce_sum"] / jnp.maximum(terms["n_tokens"], 1.0)}
    for name in TASK_NAMES.values():
        out[f"loss_{name}"] = terms[f"{name}_ce_sum"] / jnp.maximum(terms[f"{name}_tokens"], 1.0)
    out["loss_brier"] = terms["brier_sum"] / jnp.maximum(terms["n_decisions"], 1.0)
    return out
