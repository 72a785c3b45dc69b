"""Condition 'base': no fine-tuning; `metacog eval` scores the model as loaded.

    metacog eval --config=configs/base.py:domains=gsm8k+mmlu_pro,data_dir=../shared/data --workdir=runs/x/base

Sweep keys: those of configs/common.py (model, domains, ood, data_dir, lora_rank, steps, scale, seed);
`steps` is accepted but always 0 here. Any other field: --config.<field>=<value>.
"""

from configs import common


def get_config(arg=None):
    c, _ = common.experiment(
        "none", arg,
        domains=("arithmetic",),  # in domain: the held-out test split is evaluated
        ood=("comparison",),  # out of domain: test only
    )
    c.train.task, c.train.steps = "none", 0  # base: nothing is trained
    return c
