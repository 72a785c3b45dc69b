"""Graders (data/graders.py), the LLM judge (data/judge.py), Cohen's kappa and the `metacog grade` stage.

The judge's machinery is tested with a scripted sampler (verdict parsing, batching, the verdict cache and
its resume) and, in one slow test, with the embedded SmolLM2-135M-Instruct: offline it is the only judge,
a weak one, so that test checks that verdicts come back and are cached, not that they are right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metacog_jax.data import graders, judge as judge_lib
from metacog_jax.data.records import Question, write_questions
from metacog_jax.sampling import Completion, Generation

REPO = Path(__file__).resolve().parents[1]


def open_q(qid="q/1", aliases=("Napster",), question="What was the first free music download website?"):
    return Question(id=qid, domain="trivia", split="test", question=question, kind="open", answers=aliases)


def mc_q():
    return Question(id="m/1", domain="mc", split="test", question="Capital of France?", kind="multiple_choice",
                    options=("Rome", "Paris", "Oslo"), answers=("B",))


class ScriptedSampler:
    """A Sampler stand-in: replies with a scripted text per prompt (by a substring of the prompt)."""

    def __init__(self, replies: dict[str, str], default: str = "No"):
        self.replies, self.default, self.calls, self.prompts = replies, default, 0, []

    def encode_chat(self, messages):
        return messages[0]["content"]  # the "token ids" are the text itself

    def generate(self, prompts, params, key, seeds=None, progress=False):
        assert params.temperature == 0.0
        self.calls += 1
        self.prompts += list(prompts)
        out = []
        for p in prompts:
            text = next((r for k, r in self.replies.items() if f"Response: {k}" in p), self.default)
            out.append([Completion(text, [], [], "stop")])
        return Generation(out)


class FakeJudge:
    """A judge that says yes when the response holds `word`, undecided when it holds '??'."""

    def __init__(self, word="Napster"):
        self.word, self.asked = word, []

    def __call__(self, items, progress=False):
        self.asked += [r for _, r in items]
        return [None if "??" in r else (self.word in r) for _, r in items]


# -- the judge ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, verdict", [
    ("Yes", True), ("yes.", True), ("No", False), ("No, it names Kazaa.", False),
    ("The response is correct.", True), ("The response is incorrect.", False),
    ("It is not correct.", False), ("Maybe", None), ("", None), ("Yes and no", True),
    ("correct or wrong", None), ('The answer is "Yes".', True), ("The answer is not correct.", False),
    ("The answer is not", None), ('The answer is not "Yes" but', False), ("The answer is 'Yes'", True),
])
def test_parse_verdict(text, verdict):
    assert judge_lib.parse_verdict(text) is verdict


def test_judge_prompt_holds_question_gold_and_response():
    q = open_q(aliases=("Napster", "Napster.com"))
    body = judge_lib.judge_prompt(q, "It was Napster.")[0]["content"]
    assert q.question in body and "Napster; Napster.com" in body and "Response: It was Napster." in body
    mc = judge_lib.judge_prompt(mc_q(), "B")[0]["content"]
    assert "(B) Paris" in mc and "(A) Rome" in mc
    long = judge_lib.judge_prompt(q, "x" * 5000)[0]["content"]
    assert len(long) < 2000


def test_judge_batches_caches_and_resumes(tmp_path):
    cache = tmp_path / "judge.jsonl"
    sampler = ScriptedSampler({"Napster": "Yes", "Kazaa": "No", "hmm": "Perhaps"})
    judge = judge_lib.LLMJudge("m", sampler, cache_path=cache, chunk_size=2)
    q = open_q()
    items = [(q, "Napster"), (q, "Kazaa"), (q, "hmm"), (q, "Napster")]  # one repeated pair
    assert judge(items) == [True, False, None, True]
    assert judge.n_asked == 3 and sampler.calls == 2  # 3 distinct pairs in chunks of 2
    assert len(cache.read_text().splitlines()) == 3
    # A new judge on the same cache (a resumed run) asks nothing again.
    again = judge_lib.LLMJudge("m", ScriptedSampler({}), cache_path=cache)
    assert again(items) == [True, False, None, True] and again.n_asked == 0
    # Another judge model, or an edited question, is a different key.
    other = judge_lib.LLMJudge("other", ScriptedSampler({}, default="Yes"), cache_path=cache)
    assert other([(q, "Kazaa")]) == [True] and other.n_asked == 1
    edited = open_q(aliases=("Kazaa",))
    assert judge_lib.cache_key("m", edited, "Kazaa") != judge_lib.cache_key("m", q, "Kazaa")
    assert judge_lib.cache_key("m", q, "Kazaa", 4) != judge_lib.cache_key("m", q, "Kazaa", 8)  # another budget


def test_verdict_cache_drops_a_truncated_line_and_names_a_bad_one(tmp_path):
    cache = tmp_path / "judge.jsonl"
    cache.write_text(json.dumps({"key": "a", "verdict": True}) + "\n" + '{"key": "b", "verd')
    c = judge_lib.VerdictCache(cache)
    assert len(c) == 1 and c["a"] is True and cache.read_text().endswith("\n")
    cache.write_text(json.dumps({"key": "a", "verdict": "yes"}) + "\n")
    with pytest.raises(ValueError, match=r"judge.jsonl:1"):
        judge_lib.VerdictCache(cache)


# -- graders ----------------------------------------------------------------------------------------------------
def test_rule_mode_never_asks_the_judge_and_names_the_rule():
    q = open_q()
    fake = FakeJudge()
    grader = graders.Grader(graders.GradingSettings(mode="rule", open_rule="exact"), fake)
    g = grader.grade_many([(q, "Napster"), (q, "The first one was Napster.")])
    assert [x.correct for x in g] == [True, False] and fake.asked == []
    assert {x.grader for x in g} == {"rule:exact"}
    assert graders.Grader().grade_many([(mc_q(), "B")])[0].grader == "rule:choice"


def test_judge_mode_asks_for_its_kinds_and_falls_back_to_the_rule_when_undecided():
    q, m = open_q(), mc_q()
    fake = FakeJudge()
    settings = graders.GradingSettings(mode="judge", open_rule="exact", judge="fake")
    g = graders.Grader(settings, fake).grade_many(
        [(q, "The first one was Napster."), (q, "Kazaa"), (q, "?? Napster"), (m, "B")])
    assert [x.correct for x in g] == [True, False, True, True]
    assert [x.grader for x in g] == ["judge:fake", "judge:fake", "rule:exact", "rule:choice"]
    assert fake.asked == ["The first one was Napster.", "Kazaa", "?? Napster"]  # not the MC answer


def test_rule_then_judge_asks_only_where_the_rule_is_unsure():
    q = open_q(aliases=("Napster Inc",))
    fake = FakeJudge()
    settings = graders.GradingSettings(mode="rule_then_judge", open_rule="exact", judge="fake")
    g = graders.Grader(settings, fake).grade_many(
        [(q, "Napster Inc"),  # the rule is sure: right
         (q, "Kazaa"),  # the rule is sure: wrong, no word of an alias
         (q, "It was Napster")])  # wrong by the rule, but shares a word: the judge decides
    assert [x.correct for x in g] == [True, False, True]
    assert fake.asked == ["It was Napster"]
    assert [x.grader for x in g] == ["rule:exact", "rule:exact", "judge:fake"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="mode"):
        graders.GradingSettings(mode="vote")
    with pytest.raises(ValueError, match="open_rule"):
        graders.GradingSettings(open_rule="fuzzy")
    with pytest.raises(ValueError, match="judge model"):
        graders.GradingSettings(mode="judge")
    with pytest.raises(ValueError, match="not question kinds"):
        graders.GradingSettings(judge_kinds=("essay",))
    with pytest.raises(ValueError, match="needs a judge"):
        graders.Grader(graders.GradingSettings(mode="judge", judge="m"))


def test_settings_from_config_and_grader_specs():
    from metacog_jax.experiment_config import default_config, validate

    c = default_config()
    assert graders.settings_from_config(c).name() == "containment"
    assert graders.settings_from_config(c, "f1:0.6").name() == "f1>=0.6"
    judged = graders.settings_from_config(c, "judge")
    assert judged.mode == "judge" and judged.judge == "smollm2-135m-instruct-gguf"  # the config's own model
    c.grading.judge = "qwen2.5_7b"  # a preset name resolves to its model spec
    assert graders.settings_from_config(c, "rule_then_judge").name() == "containment+judge:Qwen/Qwen2.5-7B-Instruct"
    for bad in ("fuzzy", "exact:0.5", "f1:high", "judge:x"):
        with pytest.raises(ValueError, match="grader"):
            graders.settings_from_config(c, bad)
    c.grading.mode = "vote"
    with pytest.raises(ValueError, match="config grading: grading mode 'vote'"):
        validate(c)


def test_modal_correctness_carries_the_judges_verdict():
    q = open_q()
    settings = graders.GradingSettings(mode="judge", open_rule="exact", judge="fake")
    texts = ["It was Napster", "It was Napster", "Kazaa"]
    graded = graders.Grader(settings, FakeJudge()).grade_many([(q, t) for t in texts + ["Napster"]])
    fields = graders.graded_fields(q, texts, "Napster", graded, settings)
    assert fields["modal_count"] == 2 and fields["consistency"] == pytest.approx(2 / 3)
    assert fields["modal_correct"] is True  # exact match alone would say False
    assert fields["greedy"]["grader"] == "judge:fake" and fields["grading"]["judge"] == "fake"


# -- kappa ----------------------------------------------------------------------------------------------------
def test_cohen_kappa_matches_sklearn_and_is_nan_without_variation():
    from sklearn.metrics import cohen_kappa_score

    from metacog_jax.evaluation import metrics

    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 2, 50)
        b = np.where(rng.random(50) < 0.7, a, 1 - a)
        assert float(metrics.cohen_kappa(a, b)) == pytest.approx(cohen_kappa_score(a, b), abs=1e-5)
    w = rng.integers(0, 3, 50)
    assert float(metrics.cohen_kappa(a, b, w)) == pytest.approx(
        cohen_kappa_score(np.repeat(a, w), np.repeat(b, w)), abs=1e-5)
    assert np.isnan(metrics.cohen_kappa(np.ones(5), np.ones(5)))
    assert float(metrics.cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1])) == pytest.approx(-1.0)


# -- the stage --------------------------------------------------------------------------------------------------
def _write_run(data: Path, questions, texts_by_id, grader):
    """A samples file (and its questions file) as the sample stage would write it, graded by `grader`."""
    lines = []
    for q in questions:
        texts, greedy = texts_by_id[q.id]
        graded = grader.grade_many([(q, t) for t in texts + [greedy]])
        lines.append({"id": q.id, "domain": q.domain, "split": q.split, "kind": q.kind,
                      **graders.graded_fields(q, texts, greedy, graded, grader.settings),
                      "k": len(texts), "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "seed": 0})
    (data / "samples").mkdir(parents=True, exist_ok=True)
    (data / "samples" / "trivia.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    write_questions(data / "questions" / "trivia.jsonl", questions)


def test_grade_stage_regrades_without_resampling_then_skips(tmp_path):
    from metacog_jax import pipeline
    from metacog_jax.experiment_config import default_config

    questions = [open_q(f"q/{i}", (alias,)) for i, alias in enumerate(["Napster", "Kazaa", "Limewire"])]
    texts = {"q/0": (["It was Napster.", "Napster", "Kazaa"], "The first one was Napster."),
             "q/1": (["Kazaa", "Kazaa", "Napster"], "Kazaa."),
             "q/2": (["I think it was Limewire, a site.", "Napster", "Napster"], "Limewire or Napster")}
    _write_run(tmp_path, questions, texts, graders.Grader(graders.GradingSettings(open_rule="exact")))
    before = [json.loads(l) for l in (tmp_path / "samples" / "trivia.jsonl").read_text().splitlines()]
    c = default_config()
    c.data.domains, c.data.ood_domains = ("trivia",), ()
    out = pipeline.stage_grade(c, tmp_path)
    r = out["domains"]["trivia"]
    assert r["greedy_accuracy_before"] == pytest.approx(1 / 3) and r["greedy_accuracy"] == pytest.approx(2 / 3)
    assert r["greedy_changed"] == 1 and r["decided_by"] == {"rule:containment": 12}
    after = [json.loads(l) for l in (tmp_path / "samples" / "trivia.jsonl").read_text().splitlines()]
    assert [a["samples"][i]["text"] for a in after for i in range(3)] == \
        [b["samples"][i]["text"] for b in before for i in range(3)]  # nothing re-sampled
    assert after[0]["greedy"]["correct"] and not after[2]["greedy"]["correct"]  # "X or Y" is not credited
    assert all(a["grading"] == {"mode": "rule", "open_rule": "containment"} for a in after)
    assert "targets" not in out  # no targets stage had run
    assert "skipped" in pipeline.stage_grade(c, tmp_path)["domains"]["trivia"]
    compared = pipeline.stage_grade(c, tmp_path, compare=("exact", "containment"), which="greedy")
    t = compared["domains"]["trivia"]
    assert t["n_answers"] == 3 and t["table"] == {"both_right": 1, "a_only": 0, "b_only": 1, "both_wrong": 1}
    assert (tmp_path / "grading" / "compare_exact_vs_containment.json").exists()


def test_grade_command_with_a_judge_on_the_tiny_model(tmp_path, capsys):
    """`metacog sample` then `metacog grade` under a judge (the tiny random model: its verdicts are noise,
    so most answers fall back to the rule; what is checked is the plumbing: records, cache, resume)."""
    from metacog_jax import cli

    base = [f"--config={REPO / 'configs/tiny.py'}", f"--workdir={tmp_path}", "--config.data.n_train=4",
            "--config.data.n_test=3", "--config.data.ood_domains=()"]
    assert cli.main(["sample", *base]) == 0
    judged = [*base, "--config.grading.mode=judge", "--config.grading.judge_kinds=('numeric',)",
              "--config.grading.judge_max_new_tokens=2"]
    capsys.readouterr()
    assert cli.main(["grade", *judged]) == 0
    out = capsys.readouterr().out
    assert "graded with judge:random" in out and "arithmetic: 7 questions" in out
    lines = [json.loads(l) for l in (tmp_path / "samples" / "arithmetic.jsonl").read_text().splitlines()]
    assert all(l["grading"]["mode"] == "judge" for l in lines)
    cache = tmp_path / "grading" / "judge_cache.jsonl"
    assert len(cache.read_text().splitlines()) >= 7  # at least one distinct answer per question
    assert cli.main(["grade", *judged]) == 0
    assert "already graded with these settings" in capsys.readouterr().out
    assert cli.main(["grade", *base, "--compare=exact,config"]) == 0
    assert "Cohen's kappa" in capsys.readouterr().out
    assert cli.main(["grade", *base, "--compare=exact"]) == 2


@pytest.mark.slow
def test_the_embedded_model_as_judge(tmp_path):
    """Offline the only judge is SmolLM2-135M-Instruct: verdicts come back, parsed and cached."""
    from metacog_jax.experiment_config import default_config

    c = default_config()
    c.grading.mode = "judge"
    grader = graders.make_grader(c, tmp_path)
    q = open_q()
    items = [(q, "Napster"), (q, "The first free music download website was Napster."), (q, "Kazaa"),
             (q, "I do not know.")]
    graded = grader.grade_many(items)
    assert len(graded) == 4
    assert all(g.grader in ("judge:smollm2-135m-instruct-gguf", "rule:containment") for g in graded)
    lines = (tmp_path / "grading" / "judge_cache.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(l)["judge"] == "smollm2-135m-instruct-gguf" for l in lines)
