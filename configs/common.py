"""What the experiment configs share: the sweep string every file accepts and the demo section.

A config file imports it as `from configs import common` (`configs` is installed with the project, so this
works from any working directory and in a config file kept anywhere on disk).

Every experiment file accepts the same sweep string, e.g.
  --config=configs/multitask.py:domains=gsm8k+mmlu_pro,lora_rank=16,model=qwen2.5_0.5b
A file passes its own defaults for the keys it cares about (`common.experiment("single", arg,
domains=("arithmetic",), steps=100, ...)`) and may add keys of its own (demo.py adds `quick` and `real`).
Fields not in the sweep string are overridden with --config.<field>=<value>.
"""

import ml_collections

from metacog_jax.config_utils import parse_arg
from metacog_jax.experiment_config import apply_model_preset, default_config

SWEEP_DEFAULTS = dict(
    model="smollm2_135m_gguf",  # a preset name from metacog_jax.experiment_config.MODEL_PRESETS
    domains=("arithmetic",),  # in-domain: train + held-out test ('+'-separated)
    ood=("comparison",),  # out-of-domain test sets
    data_dir="",  # offline copy of the official files, e.g. ../shared/data
    lora_rank=8,  # 0 = full fine-tuning
    steps=100,
    scale="0-1",
    seed=0,
)


def experiment(default_task: str, arg: str | None, **extra_defaults):
    """The default config for `default_task` (or the sweep key `task` where a file adds it), with the sweep string `arg` applied.

    Sets model (preset name, spec and mesh), train.task ("base" means "none"), data.domains,
    data.ood_domains, data.manual_dir, data.confidence_scale, train.lora.rank, train.steps and seed from
    the sweep. `extra_defaults` add or change sweep keys for one file (e.g. tiny.py adds `task`). Returns
    (config, parsed sweep args)."""
    a = parse_arg(arg, **dict(SWEEP_DEFAULTS, **extra_defaults))
    task = a.get("task", default_task)
    c = default_config()
    apply_model_preset(c, a.model)
    c.train.task = "none" if task == "base" else task
    c.data.domains = tuple(a.domains)
    c.data.ood_domains = tuple(a.ood)
    c.data.manual_dir = a.data_dir
    c.data.confidence_scale = a.scale
    c.train.lora.rank = a.lora_rank
    c.train.steps = a.steps
    c.seed = a.seed
    return c, a


def demo_fields(real_in=(), real_out=(), conditions=("base", "single", "pairwise", "multitask")):
    """The `demo` section: which real sets join when a data dir is given, and the conditions to run in turn."""
    return ml_collections.ConfigDict(dict(
        real_in_domain=tuple(real_in), real_out_of_domain=tuple(real_out), conditions=tuple(conditions)))
