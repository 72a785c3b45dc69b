"""How long a process spends reading the embedded model's GGUF header: ours against gguf.GGUFReader.

Every process that loads the embedded SmolLM2 GGUF, or only its tokenizer (the random test model uses
it), parses the file's header first: 33 metadata keys, among them 49,152 tokens and 48,900 merges as string
arrays, and 272 tensor entries. `metacog_jax.models.gguf_file.read_gguf` does it in one pass; gguf's
reader builds a NumPy view per part of every value. Both leave the tensor data memory-mapped. Best of
--repeats runs each, alternating, in one process; the ratio is what counts (the machine's speed drifts).

    .venv/bin/python benchmarks/gguf_header.py [--repeats 3]

A benchmark, not a test (tests/test_gguf_file.py checks that both read the same values and tensors).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import gguf

    from metacog_jax.models.gguf_file import read_gguf
    from metacog_jax.models.loading import embedded_model_path

    path = str(embedded_model_path("smollm2-135m-instruct-gguf"))
    times = {"ours": [], "gguf": []}
    for _ in range(args.repeats):
        for name, read in (("ours", read_gguf), ("gguf", gguf.GGUFReader)):
            t0 = time.perf_counter()
            read(path)
            times[name].append(time.perf_counter() - t0)
    ours, theirs = min(times["ours"]), min(times["gguf"])
    print(f"{datetime.date.today().isoformat()}, {machine()}")
    print(f"GGUF header of {Path(path).name}: ours {ours:.3f} s, gguf.GGUFReader {theirs:.2f} s, "
          f"{theirs / ours:.0f}x faster (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
