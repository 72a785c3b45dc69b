"""Bring your own data: a question file declared in the config (data.custom.<name>), no code.

    metacog sample --config=configs/custom_example.py --workdir=runs/custom
    metacog sample --config=configs/custom_example.py:model=tiny --workdir=runs/custom_tiny   # random model, seconds

The set `my_questions` is configs/examples/my_questions.jsonl (16 made-up multiple-choice questions in the
Hugging Face MMLU layout: `question`, `subject`, a `choices` list, a 0-based `answer`, plus `id` and
`split`). Its name is used in data.domains like a built-in set; it is built into array_record under
<workdir>/tfds once and rebuilt only when the file (or the field map) changes. More sets go beside it:

    c.data.custom.my_csv = ml_collections.ConfigDict(dict(          # A-D columns, a letter answer
        path="data/my_mmlu_style.csv", kind="multiple_choice", role="out_of_domain", test_fraction=0.2,
        fields=dict(options=("A", "B", "C", "D"), answer="answer", answer_type="letter", category="subject")))
    c.data.custom.hub_set = ml_collections.ConfigDict(dict(         # a hub dataset (connected machine)
        path="hf://<org>/<dataset>/<folder>", hf_split="test", kind="multiple_choice",
        fields=dict(options="choices", answer_type="index")))

Keys and layouts: metacog_jax/data/sources/custom.py. Sweep keys: those of configs/common.py.
"""

from pathlib import Path

import ml_collections

from configs import common

EXAMPLES = Path(__file__).resolve().parent / "examples"


def get_config(arg=None):
    c, _ = common.experiment(
        "multitask", arg,
        domains=("my_questions",),  # the custom set below, trained on and tested (its file's split column)
        ood=("comparison",),  # a procedural out-of-domain set, so the example runs offline
    )
    c.data.custom.my_questions = ml_collections.ConfigDict(dict(
        path=str(EXAMPLES / "my_questions.jsonl"),  # a file, a folder of files, or hf://<org>/<dataset>[/<folder>]
        format="",  # jsonl | csv | parquet; "" = from the extension
        kind="multiple_choice",  # multiple_choice | numeric | open | label (label also needs labels=(...))
        role="in_domain",  # in_domain: list it in data.domains; out_of_domain: in data.ood_domains
        fields=dict(
            question="question",
            options="choices",  # one list field, or several fields: ("A", "B", "C", "D")
            answer="answer",
            answer_type="index",  # letter | index (0-based) | option_text | number | aliases
            id="id",  # ids "my_questions/<id>"; "" = "my_questions/<file sha8>/<row>"
            split="split",  # train/dev/validation -> train, test -> test; "" = hash test_fraction into test
            category="subject",  # kept as meta["category"]
            context="",
        ),
    ))
    c.data.n_train, c.data.n_test = 12, 4  # the whole example file
    return c
