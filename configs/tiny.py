"""A 2-layer random model (d=64, SmolLM2 tokenizer) for tests: every stage runs in seconds on CPU.

Sweep: tiny.py:task=single (default multitask; also base, pairwise), plus the keys of configs/common.py.
"""

from configs import common


def get_config(arg=None):
    c, a = common.experiment(
        "multitask", arg,
        task="multitask",  # base | single | pairwise | multitask
        model="tiny",  # the random model of metacog_jax.experiment_config.tiny_model_fields()
        domains=("arithmetic",), ood=("comparison",),
        steps=4, lora_rank=8,
    )
    c.model.name = "random"
    c.data.n_train, c.data.n_test = 20, 12
    c.sample.k, c.sample.max_new_tokens, c.sample.batch_size = 3, 8, 8
    c.train.batch_size, c.train.max_len, c.train.checkpoint_every = 4, 384, 2
    c.train.peak_flops = 1e11  # skip the start-up matmul measurement
    c.eval.n_pairs, c.eval.n_resamples, c.eval.batch_size = 12, 50, 4
    c.demo = common.demo_fields()  # so `metacog demo --config=configs/tiny.py` runs every stage in seconds
    return c
