"""Items/s of our one-pass confidence scoring vs the same readout with transformers (PyTorch) forward passes.

The readout: for each (question, fixed answer) item, the model's exact distribution over the 101 labels of
the "0-1" confidence scale (" 0.00" .. " 1.00", five SmolLM2 tokens each) at the confidence slot of the
single-question prompt. Both sides run SmolLM2-135M-Instruct dequantized from the embedded GGUF in float32,
on the same prefixes (evaluation.scoring.single_prefix), the same label token sequences
(confidence_label_set) and the same batches (items sorted by prefix length, --batch rows per call).

  ours     evaluation.scoring.score_single: the label trie (M internal nodes) packed after each prefix, one
           compiled forward per batch with a [B, T, T] trie mask, logits only at the M + 1 read rows;
           rows right-padded to a quarter-octave length bucket.
  PyTorch  the same trie in transformers: left-padded rows [pad, prefix, trie nodes], a 4D boolean
           attention mask [B, 1, T, T] (which transformers passes to sdpa as given), position_ids, and
           logits_to_keep = M + 1 (the read rows are the last M + 1 slots); padded to the batch's longest row.
  naive    (optional, --naive_items K) the straightforward way: per item, one batched forward over the L
           sequences prefix + label (left-padded, logits_to_keep), on the first K items only (it costs about
           L (P + S) / (P + M) times the trie's FLOPs), reported in seconds per item.

Also timed: verbalized confidence (scoring.verbalized_single: greedy generation of up to 8 tokens after the
same prefix, parsed), in seconds per item, against one-pass scoring. Each timing is the best of --repeats
runs after a warm-up run that compiles every length bucket.

Forward FLOPs (same formula for both sides; padding not counted, so padding shows as lower utilisation):
    2 (N - V d) sum_i (P_i + M)  +  2 V d (M + 1) items
N parameters (embeddings once), V d the (tied) embedding / LM head, P_i the prefix length. Achieved FLOP/s
is reported against the measured matmul peak (train.metrics_log.measure_matmul_peak).

    .venv/bin/python benchmarks/scoring.py [--items 32] [--batch 16] [--domain arithmetic] [--repeats 2]
        [--naive_items 0] [--no_verbalized] [--json out.json]

A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine, tune_allocator  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCALE = "0-1"


def load_items(domain: str, n: int, data_dir: Path, seed: int = 0):
    """n test questions of `domain` and a fixed answer for each (the gold answer)."""
    from metacog_jax.data import procedural
    from metacog_jax.data.sources import load_questions

    if domain in procedural.ROLES:
        questions = procedural.generate(domain, n, seed=seed, split="test")
    else:
        with tempfile.TemporaryDirectory() as tfds_dir:
            questions = load_questions(domain, data_dir, tfds_dir, "test", n=n, seed=seed)
    if len(questions) < n:
        raise SystemExit(f"--domain {domain}: only {len(questions)} test questions, asked for {n}")
    return questions, [q.answers[0] for q in questions]


# -- PyTorch readouts -----------------------------------------------------------------------------------
def torch_trie_logprobs(hf, prefixes, trie, batch_size: int, pad_id: int) -> np.ndarray:
    """log P(label | prefix) [N, L] with the label trie in one transformers forward per batch.

    Rows are [padding, prefix (P), trie nodes (M)], left-padded to the batch's longest; the 4D mask lets
    prefix tokens attend causally within the prefix, node j the whole prefix and its ancestors, padding
    only itself.
    """
    import torch

    m = trie.num_nodes
    anc = torch.from_numpy(trie.ancestor)
    read_row = torch.from_numpy(trie.read_row).long()
    label_tokens = torch.from_numpy(trie.label_tokens).long()
    label_valid = torch.from_numpy(trie.label_valid)
    node_tokens = torch.from_numpy(trie.node_tokens).long()
    node_pos_offset = torch.from_numpy(trie.node_depth).long() - 1
    out = np.zeros((len(prefixes), trie.label_tokens.shape[0]), np.float64)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        length = max(len(prefixes[i]) for i in idx) + m
        b = len(idx)
        tokens = torch.full((b, length), pad_id, dtype=torch.long)
        positions = torch.zeros((b, length), dtype=torch.long)
        mask = torch.eye(length, dtype=torch.bool).repeat(b, 1, 1)
        causal = torch.ones((length, length), dtype=torch.bool).tril()
        for r, i in enumerate(idx):
            p = len(prefixes[i])
            off = length - m - p
            tokens[r, off:off + p] = torch.tensor(prefixes[i])
            tokens[r, length - m:] = node_tokens
            positions[r, off:off + p] = torch.arange(p)
            positions[r, length - m:] = p + node_pos_offset
            mask[r, off:off + p, off:off + p] = causal[:p, :p]
            mask[r, length - m:, off:off + p] = True
            mask[r, length - m:, length - m:] = anc
        with torch.no_grad():
            logits = hf(input_ids=tokens, position_ids=positions, attention_mask=mask[:, None],
                        logits_to_keep=m + 1).logits  # [b, M+1, V]: last prefix row, then the M nodes
            logp = torch.log_softmax(logits.float(), dim=-1)
            token_lp = logp[:, read_row, label_tokens]  # [b, L, S]
            lp = torch.where(label_valid[None], token_lp, 0.0).sum(-1)
        out[idx] = lp.double().numpy()
    return out


def torch_naive_logprobs(hf, prefix, label_ids, pad_id: int) -> np.ndarray:
    """log P(label | prefix) [L] for one prefix: one batched forward over the L sequences prefix + label."""
    import torch

    width = max(map(len, label_ids))
    length = len(prefix) + width
    n = len(label_ids)
    tokens = torch.full((n, length), pad_id, dtype=torch.long)
    attn = torch.zeros((n, length), dtype=torch.long)
    for r, lab in enumerate(label_ids):
        seq = list(prefix) + list(lab)
        tokens[r, length - len(seq):] = torch.tensor(seq)
        attn[r, length - len(seq):] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(input_ids=tokens, attention_mask=attn, position_ids=positions,
                    logits_to_keep=width + 1).logits  # rows length-width-1 .. length-1
        logp = torch.log_softmax(logits.float(), dim=-1)
    out = np.zeros((n,), np.float64)
    for r, lab in enumerate(label_ids):
        # Label token s sits at slot length - len(lab) + s and is predicted by the row before it.
        first = width - len(lab)
        out[r] = float(sum(logp[r, first + s, tok] for s, tok in enumerate(lab)))
    return out


def renormalize(logp: np.ndarray) -> np.ndarray:
    w = np.exp(logp - logp.max(axis=1, keepdims=True))
    return w / w.sum(axis=1, keepdims=True)


def main():
    tune_allocator()  # before either side allocates
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--domain", type=str, default="arithmetic",
                    help="a procedural domain (arithmetic, comparison) or a source under --data_dir (mmlu_pro)")
    ap.add_argument("--data_dir", type=str, default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive_items", type=int, default=0,
                    help="also time the per-item batched prefix+label forward on this many items (slow)")
    ap.add_argument("--no_verbalized", action="store_true")
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from metacog_jax.evaluation import scoring
    from metacog_jax.models.loading import embedded_model_path, load_model
    from metacog_jax.sampling import Sampler, length_bucket
    from metacog_jax.train.metrics_log import measure_matmul_peak

    spec = "smollm2-135m-instruct-gguf"
    path = embedded_model_path(spec)
    ours = load_model(spec)
    tok = ours.tokenizer
    questions, answers = load_items(args.domain, args.items, Path(args.data_dir))
    n = len(questions)
    labels = scoring.confidence_label_set(tok, SCALE)
    prefixes = [scoring.single_prefix(tok, q, a, SCALE) for q, a in zip(questions, answers)]
    trie = scoring.build_trie(labels.token_ids, scoring._pad_id(tok))
    m = trie.num_nodes
    peak = measure_matmul_peak()

    def run_ours():
        return scoring.score_single(ours.model, tok, questions, answers, SCALE, batch_size=args.batch)

    t0 = time.perf_counter()
    ours_out = run_ours()  # compiles each length bucket
    ours_first = time.perf_counter() - t0
    t_ours = best_of(run_ours, args.repeats)
    # The prefix/label preparation inside score_single, timed alone (host-side tokenization).
    t_prep = best_of(lambda: ([scoring.single_prefix(tok, q, a, SCALE) for q, a in zip(questions, answers)],
                              scoring.confidence_label_set(tok, SCALE)), args.repeats)
    ours_dist = np.stack([o["distribution"] for o in ours_out])

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    pad = scoring._pad_id(tok)

    def run_torch():
        # Same work as score_single: prefixes and label set from text, then the forward passes.
        lab = scoring.confidence_label_set(tok, SCALE)
        pre = [scoring.single_prefix(tok, q, a, SCALE) for q, a in zip(questions, answers)]
        return renormalize(torch_trie_logprobs(hf, pre, scoring.build_trie(lab.token_ids, pad), args.batch, pad))

    torch_dist = run_torch()  # warm-up
    t_torch = best_of(run_torch, args.repeats)

    cfg = ours.config
    vd = cfg.vocab_size * cfg.hidden_size
    n_params = cfg.num_params()
    real_tokens = sum(len(p) + m for p in prefixes)
    # Slots each side computes: ours pads rows to a length bucket and the last batch to --batch rows;
    # the PyTorch side pads to the batch's longest row.
    by_len = sorted(len(p) for p in prefixes)
    chunks = [by_len[i:i + args.batch] for i in range(0, n, args.batch)]
    ours_slots = sum(args.batch * length_bucket(c[-1] + m, 16, per_octave=scoring.BUCKETS_PER_OCTAVE)
                     for c in chunks)
    torch_slots = sum(len(c) * (c[-1] + m) for c in chunks)
    flops = 2.0 * (n_params - vd) * real_tokens + 2.0 * vd * (m + 1) * n
    result = {
        "machine": machine(), "torch_threads": torch.get_num_threads(), "items": n, "batch": args.batch,
        "domain": args.domain, "scale": SCALE, "labels": len(labels.labels), "trie_nodes": m,
        "mean_prefix_tokens": float(np.mean([len(p) for p in prefixes])), "params": n_params,
        "matmul_peak_flops": peak, "forward_flops": flops,
        "ours_seconds": t_ours, "ours_first_call_seconds": ours_first, "ours_prep_seconds": t_prep,
        "torch_trie_seconds": t_torch,
        "ours_items_per_s": n / t_ours, "torch_trie_items_per_s": n / t_torch, "ratio_ours_over_torch": t_torch / t_ours,
        "ours_flops_per_s": flops / t_ours, "ours_mfu": flops / t_ours / peak,
        "torch_flops_per_s": flops / t_torch, "torch_mfu": flops / t_torch / peak,
        "max_abs_prob_diff_torch_vs_ours": float(np.abs(torch_dist - ours_dist).max()),
        "real_tokens": real_tokens, "ours_padded_tokens": ours_slots, "torch_padded_tokens": torch_slots,
    }

    if args.naive_items > 0:
        k = min(args.naive_items, n)
        torch_naive_logprobs(hf, prefixes[0], labels.token_ids, pad)  # warm-up
        t0 = time.perf_counter()
        naive = np.stack([torch_naive_logprobs(hf, prefixes[i], labels.token_ids, pad) for i in range(k)])
        t_naive = time.perf_counter() - t0
        width = max(map(len, labels.token_ids))
        naive_tokens = sum(len(labels.token_ids) * (len(prefixes[i]) + width) for i in range(k))
        result.update(naive_items=k, torch_naive_seconds_per_item=t_naive / k,
                      naive_over_trie_tokens=naive_tokens / sum(len(prefixes[i]) + m for i in range(k)),
                      max_abs_prob_diff_naive_vs_ours=float(np.abs(renormalize(naive) - ours_dist[:k]).max()))

    if not args.no_verbalized:
        sampler = Sampler(ours.model, tok, batch_size=args.batch)

        def run_verbalized():
            return scoring.verbalized_single(sampler, questions, answers, SCALE)

        verb = run_verbalized()  # compile
        t_verb = best_of(run_verbalized, args.repeats)
        result.update(verbalized_seconds=t_verb, verbalized_seconds_per_item=t_verb / n,
                      verbalized_parse_failures=verb.n_failures,
                      scoring_over_verbalized_speed=t_verb / t_ours)
    del hf

    print(f"machine: {result['machine']} (torch threads {result['torch_threads']})")
    print(f"{n} {args.domain} items (mean prefix {result['mean_prefix_tokens']:.0f} tokens), scale {SCALE}: "
          f"{len(labels.labels)} labels, trie of {m} nodes, batch {args.batch}, float32, SmolLM2-135M-Instruct")
    print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s; forward FLOPs of the readout "
          f"{flops / 1e12:.3f} TFLOP")
    print(f"  ours (score_single, trie) : {result['ours_items_per_s']:7.2f} items/s ({t_ours:.2f} s; "
          f"{flops / t_ours / 1e9:.1f} GFLOP/s = {100 * result['ours_mfu']:.1f}% of peak; "
          f"first call with compiles {ours_first:.1f} s; host prep {t_prep:.2f} s)")
    print(f"  PyTorch (trie, 4D mask)   : {result['torch_trie_items_per_s']:7.2f} items/s ({t_torch:.2f} s; "
          f"{flops / t_torch / 1e9:.1f} GFLOP/s = {100 * result['torch_mfu']:.1f}% of peak)")
    print(f"  token slots computed      : ours {ours_slots} (bucketed), PyTorch {torch_slots}, real {real_tokens}")
    print(f"  ratio ours / PyTorch      : {result['ratio_ours_over_torch']:.2f}x   "
          f"(max |p_ours - p_torch| = {result['max_abs_prob_diff_torch_vs_ours']:.2e})")
    if "torch_naive_seconds_per_item" in result:
        print(f"  PyTorch naive (prefix+label x {len(labels.labels)}): "
              f"{result['torch_naive_seconds_per_item']:.2f} s/item on {result['naive_items']} items "
              f"({result['naive_over_trie_tokens']:.1f}x the trie's tokens; max |dp| vs ours "
              f"{result['max_abs_prob_diff_naive_vs_ours']:.2e})")
    if "verbalized_seconds" in result:
        print(f"  one-pass scoring          : {t_ours / n:.3f} s/item")
        print(f"  verbalized (greedy, 8 tok): {result['verbalized_seconds_per_item']:.3f} s/item "
              f"({result['verbalized_parse_failures']}/{n} unparsed); scoring is "
              f"{result['scoring_over_verbalized_speed']:.2f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
