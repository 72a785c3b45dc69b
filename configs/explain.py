"""Paper 2: explanations for the rating study (`metacog explain`), on SmolLM2-135M-Instruct by default.

    metacog explain --config=configs/explain.py --workdir=runs/p2 --domain=mmlu_pro --n=10 \\
        --config.data.manual_dir=../shared/data
    metacog explain --config=configs/explain.py:tiny --workdir=/tmp/p2 --domain=comparison --n=4

Sweep: the keys of configs/common.py plus `tiny` (the 2-layer random model and small budgets, for
tests). The `explain` section: selection thresholds (p <= theta1 "not sure", theta1 < p <= theta2
"somewhat sure", else "sure"), which length the selected style has, the instruction template of every
style ({answer} is replaced by the model's answer), generation budgets, the confidence bins items are
balanced over and the pool they are drawn from.
"""

import ml_collections

from configs import common
from metacog_jax.experiment_config import apply_model_preset
from metacog_jax.perception import explanations


def get_config(arg=None):
    c, a = common.experiment("base", arg, tiny=False)
    c.train.task = "none"  # nothing is trained: the model named by model.name, as loaded, explains
    c.explain = ml_collections.ConfigDict(dict(
        theta1=explanations.DEFAULT_THETA1,
        theta2=explanations.DEFAULT_THETA2,
        selected_length="long",  # long | short | uncertainty_only
        templates=ml_collections.ConfigDict(explanations.default_templates()),
        max_new_tokens_long=96,  # default and *_long styles
        max_new_tokens_short=40,  # *_short and *_uncertainty_only styles
        max_new_tokens_answer=32,  # greedy answers of short-answer domains (scored with P(True))
        n_bins=5,  # equal-width confidence bins of [0, 1] the items are balanced over
        pool_size=60,  # test questions whose confidence is computed before stratifying
        batch_size=8,
        progress=True,
    ))
    if a.tiny:
        apply_model_preset(c, "tiny")  # model.name = "random"
        # Untied output head: with tied embeddings the random model's greedy text echoes the last prompt
        # token ("\n") forever, so every explanation would be blank.
        c.model.random.tie_word_embeddings = False
        c.explain.max_new_tokens_long, c.explain.max_new_tokens_short = 4, 4  # one budget: one compile per bucket
        c.explain.max_new_tokens_answer = 4
        c.explain.pool_size, c.explain.batch_size = 8, 4
        c.explain.progress = False
    return c
