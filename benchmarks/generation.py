"""Tokens/s of our compiled sampler vs Hugging Face `generate` (PyTorch), same weights, batch and lengths.

Both run SmolLM2-135M-Instruct dequantized from the embedded GGUF, in float32, on the same prompts
(different lengths, left-padded), generating exactly --new_tokens tokens per sequence (EOS ignored on
both sides so the work is identical). The default is the method's setting: K=10 samples per prompt at
temperature 1 (HF: num_return_sequences=10, top_k=0); --samples 1 compares greedy decoding. Compilation
and warm-up are excluded from both timings.

    .venv/bin/python benchmarks/generation.py [--batch 16] [--new_tokens 40] [--samples 10]

Prints both absolute figures, their ratio, and the machine. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine, tune_allocator  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "Name the largest planet in the solar system.",
    "What is 17 times 3?", "Who wrote Pride and Prejudice?", "What gas do plants absorb from the air?",
    "How many legs does a spider have?", "What is the boiling point of water in Celsius?",
    "Which ocean is the largest?", "What is the chemical symbol for gold?", "Who painted the Mona Lisa?",
    "What is the square root of 144?", "In which year did World War II end?",
    "What is the longest river in Africa?", "What language is spoken in Brazil?",
    "What is the smallest prime number?", "Which organ pumps blood through the body?",
]


def main():
    tune_allocator()  # before either side allocates
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=40)
    ap.add_argument("--samples", type=int, default=10,
                    help="K samples per prompt at temperature 1 (the method's setting); 1 = greedy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()

    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from metacog_jax.models.loading import embedded_model_path, load_model
    from metacog_jax.sampling import Sampler, SamplingParams

    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = embedded_model_path("smollm2-135m-instruct-gguf")
    ours = load_model("smollm2-135m-instruct-gguf")
    sampler = Sampler(ours.model, ours.tokenizer, batch_size=args.batch)
    questions = (QUESTIONS * (args.batch // len(QUESTIONS) + 1))[:args.batch]
    prompts = [sampler.encode_chat([{"role": "user", "content": q}]) for q in questions]
    k = args.samples
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0 if k > 1 else 0.0, num_samples=k,
                            ignore_eos=True)
    key = jax.random.key(0)

    sampler.generate(prompts, params, key)  # compile
    t_ours = best_of(lambda: sampler.generate(prompts, params, key), args.repeats)

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = ours.tokenizer
    tok.padding_side = "left"
    enc = tok.pad({"input_ids": prompts}, return_tensors="pt")

    def hf_generate():
        with torch.no_grad():
            if k == 1:
                return hf.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                   do_sample=False, pad_token_id=tok.pad_token_id)
            # Pure temperature-1 sampling on both sides (HF's default top_k=50 switched off).
            return hf.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=k,
                               pad_token_id=tok.pad_token_id)

    hf_generate()  # warm-up
    t_hf = best_of(hf_generate, args.repeats)

    n = args.batch * k * args.new_tokens
    result = {"machine": machine(), "torch_threads": torch.get_num_threads(), "batch": args.batch, "samples": k,
              "new_tokens": args.new_tokens, "ours_tokens_per_s": n / t_ours, "hf_tokens_per_s": n / t_hf,
              "ratio": t_hf / t_ours, "ours_seconds": t_ours, "hf_seconds": t_hf}
    print(f"machine: {result['machine']} (torch threads {result['torch_threads']})")
    mode = "greedy" if k == 1 else f"{k} samples per prompt at temperature 1"
    print(f"{args.batch} prompts x {args.new_tokens} new tokens, {mode}, float32, SmolLM2-135M-Instruct")
    print(f"  metacog_jax sampler : {result['ours_tokens_per_s']:8.1f} tokens/s ({t_ours:.2f} s)")
    print(f"  HF generate (torch) : {result['hf_tokens_per_s']:8.1f} tokens/s ({t_hf:.2f} s)")
    print(f"  ratio ours / HF     : {result['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
