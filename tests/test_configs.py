"""The experiment configs in configs/: an installed package, loadable from any working directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metacog_jax import config_utils
from metacog_jax.data import procedural, prompts
from metacog_jax.experiment_config import validate

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
EXPERIMENT_FILES = sorted(p.name for p in CONFIG_DIR.glob("*.py") if p.name not in ("__init__.py", "common.py"))


def test_the_experiment_files_are_all_there():
    assert EXPERIMENT_FILES == ["base.py", "custom_example.py", "demo.py", "explain.py", "multitask.py",
                                "pairwise.py", "single.py", "tiny.py"]


@pytest.mark.parametrize("name", EXPERIMENT_FILES)
def test_every_config_file_loads_and_validates(name):
    config = config_utils.load_config(f"configs/{name}")
    validate(config)
    assert config.is_locked


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_config_file_edits_sys_path(path):
    text = path.read_text()
    assert "sys.path" not in text
    assert "import common" not in text.replace("from configs import common", "")


def test_configs_is_an_installed_package(tmp_path):
    # A fresh interpreter in an empty directory: the repository is not on sys.path, the installed package is.
    proc = subprocess.run(
        [sys.executable, "-c", "import configs, configs.common; print(configs.__file__); "
                               "print(sorted(configs.common.SWEEP_DEFAULTS))"],
        cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.splitlines()[0]).resolve() == (CONFIG_DIR / "__init__.py").resolve()


@pytest.mark.parametrize("spec", ["configs/demo.py", "configs/demo.py:quick",
                                  "configs/multitask.py:domains=gsm8k+mmlu_pro,lora_rank=16"])
def test_load_shipped_config_from_another_directory(spec, tmp_path, monkeypatch):
    at_root = config_utils.config_to_json(config_utils.load_config(spec))  # tests run from the repo root
    monkeypatch.chdir(tmp_path)
    assert config_utils.config_to_json(config_utils.load_config(spec)) == at_root
    with pytest.raises(FileNotFoundError, match=r"configs/nope\.py.*does not exist"):
        config_utils.load_config("configs/nope.py")


def test_a_path_that_exists_wins_over_the_installed_package(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.py").write_text(textwrap.dedent('''
        from configs import common

        def get_config(arg=None):
            c, _ = common.experiment("single", arg, steps=7)
            return c
    '''))
    monkeypatch.chdir(tmp_path)
    config = config_utils.load_config("configs/demo.py:lora_rank=4")
    assert (config.train.task, config.train.steps, config.train.lora.rank) == ("single", 7, 4)
    assert "demo" not in config


def test_a_config_file_anywhere_can_import_common(tmp_path):
    path = tmp_path / "elsewhere" / "mine.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent('''
        from configs import common

        def get_config(arg=None):
            c, _ = common.experiment("pairwise", arg, domains=("gsm8k",))
            c.train.lr = 3e-5
            return c
    '''))
    config = config_utils.load_config(f"{path}:ood=medqa+truthfulqa")
    assert config.train.task == "pairwise" and config.data.domains == ("gsm8k",)
    assert config.data.ood_domains == ("medqa", "truthfulqa") and config.train.lr == pytest.approx(3e-5)


def test_sweep_strings_reach_the_config():
    c = config_utils.load_config("configs/multitask.py:domains=gsm8k+mmlu_pro,lora_rank=16,model=qwen2.5_0.5b")
    assert c.data.domains == ("gsm8k", "mmlu_pro") and c.train.lora.rank == 16
    assert c.model.preset == "qwen2.5_0.5b" and c.train.task == "multitask"
    assert config_utils.load_config("configs/tiny.py:task=base").train.task == "none"
    assert config_utils.load_config("configs/base.py:steps=50").train.steps == 0
    with pytest.raises(ValueError, match="unknown key 'quick'"):
        config_utils.load_config("configs/single.py:quick")


def test_the_demo_config_reads_as_the_demo():
    c = config_utils.load_config("configs/demo.py")
    assert c.demo.conditions == ("base", "single", "pairwise", "multitask")
    assert (c.data.domains, c.data.ood_domains) == (("arithmetic",), ("comparison",))
    assert c.data.n_test >= 150  # enough in-domain test items for an AUC to say something
    assert c.sample.k == 10 and c.data.answer_instruction in prompts.ANSWER_INSTRUCTIONS
    assert c.targets.pair_orders == "both" and c.data.evaluate_on == "test"
    assert 0 < c.train.replay < 1  # the base model's own answers replayed, so training keeps them
    assert c.demo.real_in_domain == ("gsm8k", "mmlu_pro", "nq_open")
    # Every level's share of the train, test and validation questions fits that level's distinct items.
    levels = c.data.procedural_levels
    for lv in set(levels):
        share = levels.count(lv) / len(levels)
        for split, n, v in (("train", c.data.n_train, 0.0), ("test", c.data.n_test, 0.0),
                            ("train", c.data.n_train, c.data.validation_fraction)):
            assert share * n <= procedural.distinct_items("arithmetic", lv, split, c.data.test_fraction, v)
    q = config_utils.load_config("configs/demo.py:quick")
    assert q.data.n_train < c.data.n_train and q.sample.k < c.sample.k and q.train.steps < c.train.steps
