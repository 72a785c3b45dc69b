"""Tokens/s of our compiled train step vs a plain PyTorch (transformers) training loop, same model and batch.

Both sides train SmolLM2-135M-Instruct dequantized from the embedded GGUF, in float32, on the same packed
batch [B, T] of real training examples (procedural arithmetic and comparison questions rendered in the
single-question and pairwise formats by data/batching.py, first-fit packed, role-weighted loss mask), with
AdamW (lr, betas, eps, weight decay and global-norm clipping from the multitask experiment config), and the
loss  sum_t w_t CE_t / #{t: w_t > 0}.

Ours: trainer.setup_training builds the step, the same call trainer.train makes (here on a one-device
mesh: model split into states, optimizer, step jitted with the trainer's shardings and donate_argnums=(0, 1));
by default the LM head and softmax run only at the <= train.loss_positions weighted positions of each row. It is also
timed with loss_positions=0 (logits everywhere) to show what that saves.

PyTorch: AutoModelForCausalLM (sdpa attention) with packed rows given as position_ids that restart per
example, which transformers turns into a block-causal mask; full logits [B, T, V] as a researcher would
write it; loss.backward(), clip_grad_norm_, torch.optim.AdamW. LoRA on the torch side is a minimal wrapper
written here (peft is not installed): y = W x + (alpha / r) (x A) B on the same seven projections, B = 0 at
start, base weights frozen.

Timings exclude compilation / the first (warm-up) step; each figure is the best of --steps timed steps,
the variants of a mode timed one after another, each after one untimed step (see time_in_blocks).
Analytic FLOPs (same formula for both sides; N = parameters of the model, embeddings counted once):
  full fine-tuning:  6 N tokens                       (forward 2N, activation grads 2N, weight grads 2N)
  LoRA:              4 N tokens + 6 N_lora tokens      (no weight grads for the frozen base)
achieved FLOP/s = analytic FLOPs / step time, reported against the measured matmul peak
(train.metrics_log.measure_matmul_peak). The attention term (~2 L d T per token) is left out of both.

    .venv/bin/python benchmarks/train_step.py [--batch 2] [--seq_len 512] [--steps 2] [--modes full,lora]
        [--all_positions full] [--no_torch] [--json out.json]

A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, tune_allocator  # noqa: E402

# configs/*.py import their own module named `common`; let them find it instead of this directory's.
sys.modules.pop("common")

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "multitask.py"


# -- the batch ------------------------------------------------------------------------------------------
def training_batch(tokenizer, batch: int, seq_len: int, scale_name: str = "0-1", mix: float = 0.5,
                   seed: int = 0):
    """One packed multitask training batch (numpy, every array [batch, seq_len]) of real examples, and the
    BatchBuilder it came from (the trainer reads its attention window from it).

    Single examples answer with the gold answer and a target confidence spread over [0, 1]; pairwise examples
    pair consecutive questions. Enough questions are generated that the rows are full.
    """
    from metacog_jax.data import batching, procedural, prompts

    scale = prompts.confidence_scale(scale_name)
    n = max(32, batch * seq_len // 60)
    questions = (procedural.generate("arithmetic", n, seed=seed, split="all")
                 + procedural.generate("comparison", n // 2, seed=seed, split="all"))
    single = [{"question_id": q.id, "answer": q.answers[0], "target": (i * 37 % 101) / 100}
              for i, q in enumerate(questions)]
    pairwise = [{"q1": questions[i].id, "q2": questions[i + 1].id, "choice": "Q1" if i % 4 else "Q2",
                 "answers": [questions[i].answers[0], questions[i + 1].answers[0]]}
                for i in range(0, len(questions) - 1, 2)]
    single, pairwise = batching.encode_targets(tokenizer, {q.id: q for q in questions}, single, pairwise, scale,
                                               split=None)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    builder = batching.BatchBuilder(single, pairwise, batch_size=batch, max_len=seq_len, mix=mix, packing=True,
                                    seed=seed, pad_id=pad, skip_too_long=True)
    return builder.get(0), builder


def experiment_config(batch: int, seq_len: int, lora_rank: int | None, loss_positions: int | None):
    """The multitask experiment config with the benchmark's batch shape; LoRA rank and loss positions as
    given (None keeps the config's own: rank 8 on all seven projections, loss_positions 160)."""
    from metacog_jax.config_utils import load_config

    overrides = [f"train.batch_size={batch}", f"train.max_len={seq_len}", "train.peak_flops=1.0",
                 "mesh.shape=(1,1,1)"]
    if lora_rank is not None:
        overrides.append(f"train.lora.rank={lora_rank}")
    if loss_positions is not None:
        overrides.append(f"train.loss_positions={loss_positions}")
    return load_config(str(CONFIG), overrides)


# -- ours -----------------------------------------------------------------------------------------------
def build_ours(config, local_batch: dict[str, np.ndarray], builder) -> tuple[Callable[[], None], dict]:
    """Build the step as trainer.train does (one-device mesh), compile it and run the warm-up step.

    Returns (run one more step and wait for it, info: compile time, first loss, parameter counts, the
    FLOPs XLA counts for the compiled step).
    """
    import jax

    from metacog_jax import sharding as sharding_lib
    from metacog_jax.models import lora as lora_lib
    from metacog_jax.train import trainer

    mesh = sharding_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    t = config.train
    window = trainer.resolve_attention_window(config, builder)  # as trainer.train resolves it
    trainer.check_attention_window(local_batch, window)
    setup = trainer.setup_training(config, mesh, attention_window=window)
    trainable, opt_state, frozen, other = setup.trainable, setup.opt_state, setup.frozen, setup.other
    trainer.check_loss_positions(local_batch, t.loss_positions)
    batch = sharding_lib.shard_batch({k: local_batch[k] for k in trainer.BATCH_KEYS}, mesh)

    t0 = time.perf_counter()
    compiled = setup.step_fn.lower(trainable, opt_state, frozen, other, batch, 0).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    info = {"compile_s": compile_s, "trainable_params": lora_lib.count_params(trainable),
            "model_params": setup.loaded.config.num_params(),
            "xla_flops": float((cost or {}).get("flops", float("nan"))),  # what the compiled step executes
            "attention_window": window}
    state = {"trainable": trainable, "opt": opt_state, "step": 0}

    def run() -> None:
        # Donated buffers: the step's outputs are fed back as the next step's inputs, as in the trainer.
        state["trainable"], state["opt"], stats = compiled(state["trainable"], state["opt"], frozen, other,
                                                           batch, state["step"])
        jax.block_until_ready((state["trainable"], state["opt"], stats))
        state["step"] += 1
        state["stats"] = stats

    run()  # warm-up
    info["first_loss"] = float(state["stats"]["loss"])
    return run, info


# -- PyTorch --------------------------------------------------------------------------------------------
def torch_lora_wrap(model, targets: str, rank: int, alpha: float) -> int:
    """Replace every nn.Linear whose dotted name fully matches `targets` by a LoRA wrapper; freeze the rest.

    Returns the number of trainable (adapter) parameters.
    """
    import re

    import torch

    class LoRALinear(torch.nn.Module):
        def __init__(self, base: torch.nn.Linear):
            super().__init__()
            self.base = base
            self.lora_a = torch.nn.Parameter(torch.empty(base.in_features, rank))
            torch.nn.init.kaiming_uniform_(self.lora_a, a=5 ** 0.5)
            self.lora_b = torch.nn.Parameter(torch.zeros(rank, base.out_features))
            self.scale = alpha / rank

        def forward(self, x):
            return self.base(x) + self.scale * ((x @ self.lora_a) @ self.lora_b)

    for p in model.parameters():
        p.requires_grad_(False)
    pattern = re.compile(targets)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise ValueError(f"LoRA target regex {targets!r} matches no torch Linear module")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_torch(config, local_batch: dict[str, np.ndarray], model_dir: Path, gguf_name: str
                ) -> tuple[Callable[[], None], dict]:
    """A plain PyTorch training loop over the transformers model; same batch, optimizer settings and loss.

    Returns (run one more step, info: first loss, trainable parameters), after a warm-up step.
    """
    import torch
    from transformers import AutoModelForCausalLM

    t = config.train
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=gguf_name, dtype=torch.float32)
    model.train()
    if t.lora.rank > 0:
        # Our paths are "layers.3.self_attn.q_proj"; transformers nests them under "model.".
        n_trainable = torch_lora_wrap(model, r"model\." + t.lora.targets, t.lora.rank, t.lora.alpha)
    else:
        n_trainable = sum(p.numel() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=t.weight_decay)
    tokens = torch.from_numpy(local_batch["tokens"]).long()
    positions = torch.from_numpy(local_batch["positions"]).long()
    targets = torch.from_numpy(local_batch["targets"]).long()
    weights = torch.from_numpy(local_batch["loss_weights"])
    n_tokens = (weights > 0).sum().clamp(min=1)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        # use_cache=False: with a cache transformers ignores the packing in position_ids and lets every
        # token attend to the earlier examples of its row.
        logits = model(input_ids=tokens, position_ids=positions, use_cache=False).logits  # [B, T, V] float32
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        loss = (ce * weights.flatten()).sum() / n_tokens
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        return float(loss.detach())

    loss0 = step()  # warm-up
    return step, {"first_loss": loss0, "trainable_params": n_trainable}


def time_in_blocks(runners: dict[str, Callable[[], None]], steps: int) -> dict[str, list[float]]:
    """Wall seconds of `steps` consecutive calls of each runner, one runner after another, each block
    after one untimed call.

    Not interleaved (a, b, a, b, ...): the first step after another variant has run is slower on both
    sides (measured on the 2-core CPU: ours 8.5 s instead of 5.9 s, PyTorch 7.0 s instead of 4.6 s), as
    each step re-faults memory the other side's step released. Interleaving would time only such steps.
    """
    times = {name: [] for name in runners}
    for name, run in runners.items():
        run()  # re-warm after the previous variant
        for _ in range(steps):
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times


# -- report ---------------------------------------------------------------------------------------------
def analytic_flops(n_params: int, n_lora: int, tokens: int, lora: bool) -> float:
    """Model FLOPs of one step: 6 N tokens (full) or 4 N tokens + 6 N_lora tokens (LoRA)."""
    return (4.0 * n_params + 6.0 * n_lora) * tokens if lora else 6.0 * n_params * tokens


def main():
    tune_allocator()  # before either side allocates
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=2, help="rows (4 on a quiet machine; 2 keeps the default "
                    "run near 5 minutes on 2 CPU cores)")
    ap.add_argument("--seq_len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant after one warm-up step")
    ap.add_argument("--modes", type=str, default="full,lora", help="comma list of full, lora")
    ap.add_argument("--no_torch", action="store_true", help="time only our step")
    ap.add_argument("--all_positions", type=str, default="full",
                    help="modes in which our step is also timed with loss_positions=0 (comma list; '' = none)")
    ap.add_argument("--whole_rows", type=str, default="",
                    help="modes in which our step is also timed with attention over whole rows "
                         "(train.attention_window=0; comma list)")
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("full", "lora")]
    if bad:
        raise SystemExit(f"--modes: unknown mode(s) {bad}; use full and/or lora")

    import torch

    from metacog_jax.models.loading import embedded_model_path
    from metacog_jax.models.build import tokenizer_from_spec
    from metacog_jax.train.metrics_log import measure_matmul_peak

    spec = "smollm2-135m-instruct-gguf"
    path = embedded_model_path(spec)
    tokenizer = tokenizer_from_spec(spec)
    local, builder = training_batch(tokenizer, args.batch, args.seq_len)
    b, tl = local["tokens"].shape
    tokens = b * tl
    weighted = int((local["loss_weights"] > 0).sum())
    real = int((local["segment_ids"] > 0).sum())
    peak = measure_matmul_peak()

    result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "batch": b, "seq_len": tl,
              "tokens_per_step": tokens, "real_tokens": real, "weighted_positions": weighted,
              "weighted_share": weighted / tokens, "max_weighted_per_row":
                  int((local["loss_weights"] > 0).sum(axis=1).max()),
              "matmul_peak_flops": peak, "modes": {}}
    n_params = None
    for mode in modes:
        base_cfg = experiment_config(b, tl, 0 if mode == "full" else None, None)
        if mode == "lora" and base_cfg.train.lora.rank == 0:
            raise SystemExit(f"{CONFIG} has train.lora.rank=0; the lora mode needs a rank")
        entry = {"loss_positions": int(base_cfg.train.loss_positions), "lora_rank": int(base_cfg.train.lora.rank)}
        runners = {}
        runners["ours"], entry["ours"] = build_ours(base_cfg, local, builder)
        if mode in args.all_positions.split(","):
            runners["ours_all_positions"], entry["ours_all_positions"] = build_ours(
                experiment_config(b, tl, base_cfg.train.lora.rank, 0), local, builder)
        if mode in args.whole_rows.split(","):
            cfg = experiment_config(b, tl, base_cfg.train.lora.rank, None)
            with cfg.unlocked():
                cfg.train.attention_window = 0
            runners["ours_whole_rows"], entry["ours_whole_rows"] = build_ours(cfg, local, builder)
        if not args.no_torch:
            runners["torch"], entry["torch"] = build_torch(base_cfg, local, path.parent, path.name)
        for name, times in time_in_blocks(runners, args.steps).items():
            entry[name].update(times_s=times, best_s=min(times))
        del runners  # free this mode's models and optimizer states before the next mode builds its own
        gc.collect()
        ours = entry["ours"]
        n_params = ours["model_params"]
        n_lora = ours["trainable_params"] if mode == "lora" else 0
        flops = analytic_flops(n_params, n_lora, tokens, mode == "lora")
        entry["analytic_flops_per_step"] = flops
        for side in ("ours", "ours_all_positions", "ours_whole_rows", "torch"):
            if side in entry:
                s = entry[side]["best_s"]
                entry[side].update(tokens_per_s=tokens / s, flops_per_s=flops / s, mfu=flops / s / peak)
        if "torch" in entry:
            entry["ratio_ours_over_torch"] = entry["torch"]["best_s"] / ours["best_s"]
        if "ours_all_positions" in entry:
            entry["speedup_loss_positions"] = entry["ours_all_positions"]["best_s"] / ours["best_s"]
        if "ours_whole_rows" in entry:
            entry["speedup_attention_window"] = entry["ours_whole_rows"]["best_s"] / ours["best_s"]
        result["modes"][mode] = entry
    result["params"] = n_params

    print(f"machine: {result['machine']} (torch threads {result['torch_threads']})")
    print(f"SmolLM2-135M-Instruct (GGUF, {n_params / 1e6:.1f}M params), float32, batch {b} x {tl} = {tokens} "
          f"tokens/step ({real} real, {weighted} weighted = {100 * result['weighted_share']:.1f}%, "
          f"at most {result['max_weighted_per_row']} per row)")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s (1024^2 float32 jitted matmul)")
    windows = sorted({e["ours"]["attention_window"] for e in result["modes"].values()})
    print(f"our attention window: {', '.join(map(str, windows))} tokens (train.attention_window=-1: the longest "
          "example; packed examples never attend to each other, so the loss is unchanged up to rounding)")
    for mode, e in result["modes"].items():
        formula = "6 N tokens" if mode == "full" else "4 N tokens + 6 N_lora tokens"
        print(f"[{mode}] {e['ours']['trainable_params'] / 1e6:.2f}M trainable, analytic "
              f"{e['analytic_flops_per_step'] / 1e12:.2f} TFLOP/step ({formula})")
        rows = [("ours (loss_positions=%d)" % e["loss_positions"], "ours"),
                ("ours (loss_positions=0)", "ours_all_positions"), ("ours (whole-row attention)", "ours_whole_rows"),
                ("PyTorch / transformers", "torch")]
        for label, key in rows:
            if key in e:
                r = e[key]
                print(f"  {label:26s}: {r['tokens_per_s']:8.1f} tokens/s  {r['best_s']:6.2f} s/step  "
                      f"{r['flops_per_s'] / 1e9:6.1f} GFLOP/s = {100 * r['mfu']:5.1f}% of peak  "
                      f"(first loss {r['first_loss']:.4f})")
        if "ratio_ours_over_torch" in e:
            print(f"  ratio ours / PyTorch       : {e['ratio_ours_over_torch']:.2f}x")
        if "speedup_loss_positions" in e:
            print(f"  logits at loss positions only: {e['speedup_loss_positions']:.2f}x faster than everywhere")
        if "speedup_attention_window" in e:
            print(f"  attention window {e['ours']['attention_window']}: {e['speedup_attention_window']:.2f}x faster "
                  "than whole rows")
        print(f"  our compile time: {e['ours']['compile_s']:.1f} s; FLOPs the compiled step executes (XLA cost "
              f"analysis, attention and masked positions included): {e['ours']['xla_flops'] / 1e12:.2f} TFLOP"
              + (f" (loss_positions=0: {e['ours_all_positions']['xla_flops'] / 1e12:.2f})"
                 if "ours_all_positions" in e else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
