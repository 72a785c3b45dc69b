"""config.targets: every option of build_targets is a config field, overridable, validated, and passed on."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from metacog_jax import config_utils, pipeline
from metacog_jax.data import targets as targets_lib
from metacog_jax.experiment_config import default_config, domain_values, validate

K = 5
# config field -> build_targets parameter (the same name unless noted)
OPTIONS = ("n_bins", "jitter", "mode", "balance", "balance_factor", "max_per_bin", "pairs_per_question",
           "pair_scope", "pair_label", "per_domain_bins", "domain_weights", "domain_caps", "pair_orders",
           "answer_source")


def tiny(*overrides: str):
    """configs/tiny.py (in-domain arithmetic + gsm8k so domain mappings have two names) with overrides."""
    return config_utils.load_config("configs/tiny.py:domains=arithmetic+gsm8k", list(overrides))


def test_defaults_match_build_targets():
    t = default_config().targets
    params = inspect.signature(targets_lib.build_targets).parameters
    assert set(OPTIONS) <= set(t.keys())
    for name in OPTIONS:
        value = t[name]
        if name in ("domain_weights", "domain_caps"):
            assert value == () and domain_values(value, name) is None  # empty = off = None
            value = None
        elif name == "max_per_bin":
            assert value == 0  # 0 = the builder's rule = None
            value = None
        assert value == params[name].default, name


def test_every_field_overrides_from_the_command_line():
    argv = ["targets", "--config=configs/tiny.py:domains=arithmetic+gsm8k",
            "--config.targets.pair_label=bin_accuracy", "--config.targets.pair_scope", "all",
            "--config.targets.per_domain_bins=false", "--config.targets.balance_factor=1.5",
            "--config.targets.domain_weights=arithmetic=1,gsm8k=2.5", "--config.targets.domain_caps=gsm8k=300",
            "--config.targets.pair_orders=both", "--config.targets.answer_source=greedy"]
    spec, overrides, rest = config_utils.split_config_argv(argv)
    c = config_utils.load_config(spec, overrides)
    validate(c)
    t = c.targets
    assert rest == ["targets"]
    assert (t.pair_label, t.pair_scope, t.per_domain_bins, t.pair_orders) == ("bin_accuracy", "all", False, "both")
    assert t.balance_factor == 1.5 and t.answer_source == "greedy"
    assert t.domain_weights == ("arithmetic=1", "gsm8k=2.5") and t.domain_caps == ("gsm8k=300",)
    assert domain_values(t.domain_weights, "w") == {"arithmetic": 1.0, "gsm8k": 2.5}
    assert domain_values(t.domain_caps, "c", int) == {"gsm8k": 300}
    # "+" separates too, a Python literal works, and the empty value switches a mapping off again
    assert tiny("targets.domain_weights=arithmetic=1+gsm8k=0").targets.domain_weights == ("arithmetic=1", "gsm8k=0")
    assert tiny('targets.domain_caps=("arithmetic=5",)').targets.domain_caps == ("arithmetic=5",)
    assert tiny("targets.domain_caps=gsm8k=3", "targets.domain_caps=").targets.domain_caps == ()
    # the config stays locked: a misspelt field fails with a suggestion
    with pytest.raises(ValueError, match=r"no field 'targets\.pair_lable'.*did you mean targets\.pair_label"):
        tiny("targets.pair_lable=target")
    with pytest.raises(ValueError, match="expected a float"):
        tiny("targets.balance_factor=lots")


@pytest.mark.parametrize("overrides, message", [
    (["targets.pair_label=bins"], r"targets\.pair_label='bins'; choose one of consistency, target, bin_accuracy"),
    (["targets.pair_label=bin_accuracy", "targets.mode=consistency"], r"targets\.pair_label='bin_accuracy' needs "
                                                                      r"targets\.mode='binned_accuracy'"),
    (["targets.pair_scope=world"], r"targets\.pair_scope='world'"),
    (["targets.pair_orders=twice"], r"targets\.pair_orders='twice'; choose one of random, both"),
    (["targets.mode=accuracy"], r"targets\.mode='accuracy'"),
    (["targets.answer_source=best"], r"targets\.answer_source='best'; choose one of modal, greedy"),
    (["targets.balance_factor=0"], r"targets\.balance_factor=0\.0 must be > 0"),
    (["targets.domain_weights=arithmetic"], r"targets\.domain_weights: entry 'arithmetic' is not name=value"),
    (["targets.domain_weights=arithmetic=1,arithmetic=2,gsm8k=1"], r"targets\.domain_weights: domain "
                                                                   r"'arithmetic' given twice"),
    (["targets.domain_weights=arithmetic=x,gsm8k=1"], r"targets\.domain_weights: arithmetic='x' is not a number"),
    (["targets.domain_weights=arithmetic=1"], r"targets\.domain_weights has no weight for data\.domains \['gsm8k'\]"),
    (["targets.domain_weights=arithmetic=1,gsm8k=1,gsm8kk=1"], r"targets\.domain_weights names \['gsm8kk'\]"),
    (["targets.domain_weights=arithmetic=0,gsm8k=0"], r"targets\.domain_weights needs a positive weight"),
    (["targets.domain_weights=arithmetic=-1,gsm8k=1"], r"targets\.domain_weights must be >= 0"),
    (["targets.domain_caps=gsm8k=2.5"], r"targets\.domain_caps: gsm8k='2\.5' is not a whole number"),
    (["targets.domain_caps=gsm8k=-3"], r"targets\.domain_caps must be >= 0"),
    (["targets.domain_caps=mmlu=3"], r"targets\.domain_caps names \['mmlu'\], which are not in data\.domains"),
])
def test_validate_names_the_bad_field(overrides, message):
    c = tiny(*overrides)
    with pytest.raises(ValueError, match=message):
        validate(c)


def test_shipped_configs_keep_the_builder_defaults():
    for name in ("single.py", "tiny.py"):  # demo.py trains on pairs in both orders (tests/test_configs.py)
        t = config_utils.load_config(f"configs/{name}").targets
        assert (t.pair_label, t.pair_scope, t.pair_orders, t.per_domain_bins, t.balance_factor,
                t.domain_weights, t.domain_caps) == ("consistency", "domain", "random", True, 2.0, (), ()), name


# -- stage_targets ---------------------------------------------------------------------------------------
def test_stage_targets_passes_every_option(monkeypatch, tmp_path):
    seen = {}

    def fake_build(samples, questions, **kw):
        seen.update(kw)
        return [], [], {"fake": True}

    monkeypatch.setattr(targets_lib, "load_sampled", lambda workdir, domains: ([], {}))
    monkeypatch.setattr(targets_lib, "build_targets", fake_build)
    monkeypatch.setattr(targets_lib, "write_targets", lambda *a: None)
    c = tiny("targets.n_bins=5", "targets.jitter=0.01", "targets.mode=consistency", "targets.balance=false",
             "targets.balance_factor=3.0", "targets.max_per_bin=7", "targets.pairs_per_question=2",
             "targets.pair_scope=all", "targets.pair_label=target", "targets.per_domain_bins=false",
             "targets.domain_weights=arithmetic=1,gsm8k=2", "targets.domain_caps=gsm8k=9",
             "targets.pair_orders=both", "targets.answer_source=greedy", "seed=3")
    assert pipeline.stage_targets(c, tmp_path) == {"fake": True}
    assert seen == dict(n_bins=5, jitter=0.01, mode="consistency", balance=False, balance_factor=3.0, max_per_bin=7,
                        pairs_per_question=2, pair_scope="all", pair_label="target", per_domain_bins=False,
                        domain_weights={"arithmetic": 1.0, "gsm8k": 2.0}, domain_caps={"gsm8k": 9},
                        pair_orders="both", answer_source="greedy", seed=3)
    assert set(OPTIONS) <= set(seen)
    seen.clear()
    pipeline.stage_targets(tiny(), tmp_path)  # defaults: no mappings, the builder's rule for the bin cap
    assert seen["domain_weights"] is None and seen["domain_caps"] is None and seen["max_per_bin"] is None


def _sample_line(question, agree: int, correct: bool) -> dict:
    from metacog_jax.data.self_consistency import grade_samples

    answer = question.answers[0] if correct else str(int(question.answers[0]) + 1)
    texts = [f"The answer is {answer}."] * agree + ["I do not know."] * (K - agree)
    return {"id": question.id, "domain": question.domain, "split": question.split, "kind": question.kind,
            **grade_samples(question, texts, greedy_text=texts[0]),
            "k": K, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0, "model": "random"}


@pytest.fixture()
def sampled_workdir(tmp_path) -> Path:
    """samples/ and questions/ for 30 train + 6 test procedural arithmetic questions."""
    from metacog_jax.data import procedural, records

    questions = (procedural.generate("arithmetic", 30, seed=0, split="train")
                 + procedural.generate("arithmetic", 6, seed=0, split="test"))
    lines = [_sample_line(q, i % (K + 1), correct=i % 3 != 0) for i, q in enumerate(questions)]
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "arithmetic.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    records.write_questions(tmp_path / "questions" / "arithmetic.jsonl", questions)
    return tmp_path


def test_stage_targets_end_to_end_with_both_orders_and_a_cap(sampled_workdir):
    c = config_utils.load_config("configs/tiny.py", ["targets.pair_orders=both", "targets.domain_caps=arithmetic=20",
                                                    "targets.balance=false"])
    validate(c)
    summary = pipeline.stage_targets(c, sampled_workdir)
    single, pairwise, written = targets_lib.read_targets(sampled_workdir)
    assert written == summary and summary["pair_orders"] == "both" and summary["domain_caps"] == {"arithmetic": 20}
    train = summary["splits"]["train"]
    assert train["single"] == 20 and train["per_domain"]["arithmetic"]["mixing_dropped"] == 10
    assert train["q1_share"] == 0.5 and train["pairwise"] == 2 * train["distinct_pairs"] > 0
    for shown, mirror in zip(pairwise[0::2], pairwise[1::2]):
        assert (mirror["q1"], mirror["q2"], mirror["consistency"]) == (shown["q2"], shown["q1"],
                                                                       shown["consistency"][::-1])
        assert {shown["choice"], mirror["choice"]} == {"Q1", "Q2"}
    default = config_utils.load_config("configs/tiny.py", ["targets.balance=false"])
    pipeline.stage_targets(default, sampled_workdir)
    _, once, summary_once = targets_lib.read_targets(sampled_workdir)
    assert summary_once["pair_orders"] == "random" and summary_once["splits"]["train"]["single"] == 30
