"""Tests for metacog_jax.config_utils: sweep strings, config files, overrides, config.json."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import ml_collections
import pytest

from metacog_jax import config_utils


# --- parse_arg ---------------------------------------------------------------


def test_parse_arg_types_from_defaults():
    cfg = config_utils.parse_arg(
        "domains=gsm8k+mmlu_pro,lora_rank=16,quick,lr=3e-4",
        domains="", lora_rank=8, quick=False, lr=1e-3, seed=0)
    assert cfg.domains == "gsm8k+mmlu_pro"
    assert cfg.lora_rank == 16 and isinstance(cfg.lora_rank, int)
    assert cfg.quick is True
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.seed == 0  # untouched default


def test_parse_arg_tuple_default_splits_on_plus():
    cfg = config_utils.parse_arg("domains=gsm8k+mmlu_pro,sizes=1+2+3",
                                 domains=("gsm8k",), sizes=(4,))
    assert cfg.domains == ("gsm8k", "mmlu_pro")
    assert cfg.sizes == (1, 2, 3)


def test_parse_arg_empty_and_bool_words():
    assert config_utils.parse_arg(None, a=1).a == 1
    assert config_utils.parse_arg("", a=1).a == 1
    assert config_utils.parse_arg("quick=false", quick=True).quick is False
    assert config_utils.parse_arg("quick=1", quick=False).quick is True


def test_parse_arg_unknown_key_lists_known():
    with pytest.raises(ValueError, match=r"unknown key 'lora'.*known keys: domains, lora_rank"):
        config_utils.parse_arg("lora=4", domains="", lora_rank=8)


@pytest.mark.parametrize("arg, message", [
    ("rank=abc", "expected an integer"),
    ("rank", "bare name only sets a bool"),
    ("rank=1,rank=2", "given twice"),
    ("quick=maybe", "expected a boolean"),
])
def test_parse_arg_bad_values(arg, message):
    with pytest.raises(ValueError, match=message):
        config_utils.parse_arg(arg, rank=8, quick=False)


@pytest.mark.parametrize("text", ["(my_mmlu", "[my_mmlu]"])
def test_a_broken_list_literal_names_the_field(text):
    with pytest.raises(ValueError, match=r"data\.domains: .* is not a Python list or tuple literal \(quote strings"):
        config_utils.parse_value(text, ("arithmetic",), "data.domains")
    assert config_utils.parse_value("['a', 'b']", ("arithmetic",), "data.domains") == ("a", "b")


# --- load_config ---------------------------------------------------------------

CONFIG_FILE = textwrap.dedent('''
    import ml_collections
    from ml_collections import config_dict
    from metacog_jax.config_utils import parse_arg

    def get_config(arg=None):
        a = parse_arg(arg, domains=("gsm8k",), lora_rank=8, quick=False)
        c = ml_collections.ConfigDict()
        c.domains = a.domains
        c.quick = a.quick
        c.model = ml_collections.ConfigDict(dict(name="smollm2_135m", dtype="float32"))
        c.train = ml_collections.ConfigDict(dict(lr=1e-4, steps=100, lora_rank=a.lora_rank,
                                                 warmup=None, use_lora=True))
        c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1)))
        c.max_len = config_dict.placeholder(int)
        return c
''')


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "exp.py"
    path.write_text(CONFIG_FILE)
    return path


def test_load_config_arg_and_overrides(config_path):
    cfg = config_utils.load_config(
        f"{config_path}:domains=gsm8k+mmlu_pro,lora_rank=16,quick",
        ["train.lr=1e-5", "train.steps=7", "model.name=qwen", "train.warmup=0.1",
         "mesh.shape=2,-1,1", "train.use_lora=false", "--config.max_len=128"])
    assert cfg.domains == ("gsm8k", "mmlu_pro")
    assert cfg.quick is True
    assert cfg.train.lora_rank == 16
    assert cfg.train.lr == pytest.approx(1e-5)
    assert cfg.train.steps == 7
    assert cfg.model.name == "qwen"
    assert cfg.train.warmup == pytest.approx(0.1)  # None-valued: parsed as a literal
    assert cfg.mesh.shape == (2, -1, 1)
    assert cfg.train.use_lora is False
    assert cfg.max_len == 128  # typed placeholder
    assert cfg.is_locked
    with pytest.raises(AttributeError):
        cfg.train.lrr = 1.0  # locked: typos fail


def test_load_config_without_arg_uses_defaults(config_path):
    cfg = config_utils.load_config(str(config_path))
    assert cfg.domains == ("gsm8k",) and cfg.train.lora_rank == 8


def test_load_config_unknown_override_suggests(config_path):
    with pytest.raises(ValueError, match=r"no field 'train\.lrr'.*did you mean train\.lr"):
        config_utils.load_config(str(config_path), ["train.lrr=1e-5"])
    with pytest.raises(ValueError, match=r"no field 'trian'.*did you mean train"):
        config_utils.load_config(str(config_path), ["trian.lr=1e-5"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", "expected an integer"),
    ("train.lr", "expected <field>=<value>"),
    ("train=1", "is a sub-config"),
    ("quick=perhaps", "expected a boolean"),
])
def test_load_config_bad_overrides(config_path, override, message):
    with pytest.raises(ValueError, match=message):
        config_utils.load_config(str(config_path), [override])


def test_load_config_missing_file_and_get_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_utils.load_config(str(tmp_path / "nope.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        config_utils.load_config(str(bad))


# --- split_config_argv ---------------------------------------------------------


def test_split_config_argv_all_forms():
    argv = ["train", "--config=configs/a.py:domains=gsm8k,lora_rank=16", "--workdir=/tmp/w",
            "--config.train.lr=1e-5", "--config.model.name", "qwen", "--config.quick",
            "--verbose", "--config.train.steps", "-1"]
    spec, overrides, rest = config_utils.split_config_argv(argv)
    assert spec == "configs/a.py:domains=gsm8k,lora_rank=16"
    assert overrides == ["train.lr=1e-5", "model.name=qwen", "quick=true", "train.steps=-1"]
    assert rest == ["train", "--workdir=/tmp/w", "--verbose"]


def test_split_config_argv_space_form_and_errors():
    spec, overrides, rest = config_utils.split_config_argv(["--config", "c.py", "--", "--config.x=1"])
    assert spec == "c.py" and overrides == [] and rest == ["--", "--config.x=1"]
    assert config_utils.split_config_argv(["eval"]) == (None, [], ["eval"])
    with pytest.raises(ValueError, match="given twice"):
        config_utils.split_config_argv(["--config=a.py", "--config=b.py"])
    with pytest.raises(ValueError, match="needs a value"):
        config_utils.split_config_argv(["--config"])


def test_split_then_load_roundtrip(config_path):
    argv = ["train", f"--config={config_path}:lora_rank=4", "--config.train.lr", "2e-5"]
    spec, overrides, _ = config_utils.split_config_argv(argv)
    cfg = config_utils.load_config(spec, overrides)
    assert cfg.train.lora_rank == 4 and cfg.train.lr == pytest.approx(2e-5)


# --- config.json -----------------------------------------------------------------


def test_save_and_load_config_json(tmp_path, config_path):
    cfg = config_utils.load_config(f"{config_path}:quick")
    written = config_utils.save_config(cfg, tmp_path / "workdir")
    assert written == tmp_path / "workdir" / "config.json"
    data = json.loads(written.read_text())
    assert data["train"]["lr"] == pytest.approx(1e-4)
    assert data["domains"] == ["gsm8k"]
    assert data["quick"] is True
    # No temporary file is left behind.
    assert sorted(p.name for p in written.parent.iterdir()) == ["config.json"]
    back = config_utils.load_config_json(tmp_path / "workdir")
    assert back.domains == ("gsm8k",) and back.mesh.shape == (1, -1, 1)
    assert back.train.steps == cfg.train.steps


def test_save_config_to_explicit_json_path(tmp_path):
    cfg = ml_collections.ConfigDict({"a": 1, "b": (0.5, None)})
    written = config_utils.save_config(cfg, tmp_path / "sub" / "c.json")
    data = json.loads(written.read_text())
    assert data == {"a": 1, "b": [0.5, None]}
    # A value with no JSON form is an error naming the field, not its repr written silently, and the
    # earlier file stays whole.
    with pytest.raises(TypeError, match=r"value\['f'\]: builtin_function_or_method"):
        config_utils.save_config(ml_collections.ConfigDict({"a": 2, "f": print}), written)
    assert json.loads(written.read_text())["a"] == 1
    assert [p.name for p in written.parent.iterdir()] == ["c.json"]


def test_load_config_json_reports_bad_json(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1,\n  oops}')
    with pytest.raises(ValueError, match="line 2"):
        config_utils.load_config_json(tmp_path)
