"""Experiment configs (big_vision style): one file per experiment, each defining `get_config(arg)`.

Installed with the project (like `big_vision.configs`), so a config file anywhere on disk starts with
`from configs import common`, and `--config=configs/<file>.py[:sweep]` loads the shipped files from any
working directory. `common` holds what the files share: the sweep string (`common.experiment`) and the
demo section (`common.demo_fields`). The files: `base` (no fine-tuning), `single` (S), `pairwise` (C),
`multitask` (C+S), `demo` (all four on a CPU), `tiny` (a 2-layer random model for tests), `explain`
(paper 2's explanations) and `custom_example` (a question set of your own, declared in the config, with
its data file in `examples/`).
"""
