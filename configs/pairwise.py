"""Condition 'C': fine-tune on the pairwise task: two questions, which one the model is more likely right on.

    metacog train --config=configs/pairwise.py:domains=gsm8k+mmlu_pro,lora_rank=16 --workdir=runs/x/C

Sweep keys: those of configs/common.py (model, domains, ood, data_dir, lora_rank, steps, scale, seed);
the defaults below are this experiment's. Any other field: --config.<field>=<value>.
"""

from configs import common
from metacog_jax.experiment_config import LORA_ALL_LINEAR


def get_config(arg=None):
    c, _ = common.experiment(
        "pairwise", arg,
        domains=("arithmetic",),  # in domain: train + held-out test (procedural, no files needed)
        ood=("comparison",),  # out of domain: test only
        steps=100,
        lora_rank=8,  # 0 = full fine-tuning
    )
    c.train.task = "pairwise"  # C: pairwise examples only
    c.train.lora.alpha, c.train.lora.targets = 16.0, LORA_ALL_LINEAR  # every attention and MLP projection
    c.train.lr, c.train.warmup_steps, c.train.batch_size = 1e-4, 10, 8
    # Cross-entropy weights: per task (single unused here) and per completion part; brier > 0 adds a
    # Brier term over the confidence labels.
    c.train.loss.update(single=1.0, pairwise=1.0, answer=1.0, confidence=1.0, choice=1.0, format=1.0, brier=0.0)
    return c
