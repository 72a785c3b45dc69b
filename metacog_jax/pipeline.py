"""The stages of one experiment, each a function of (config, workdir) that the CLI and notebooks call.

    sample   -> <data>/samples/<domain>.jsonl, <data>/questions/<domain>.jsonl
    grade    -> the samples graded again (config.grading), <data>/grading/; targets rebuilt
    targets  -> <data>/targets/{single,pairwise}.jsonl, summary.json
    train    -> <run>/checkpoints, <run>/train/metrics.jsonl (+ TensorBoard)
    evaluate -> <run>/eval/<dataset>.jsonl, <run>/eval/metrics.json

<data> is the directory holding the base model's samples and targets (shared by every condition);
<run> is one condition's directory. By default they are the same. Each stage resumes: sampling skips
finished questions, training restarts from its last checkpoint, evaluation skips datasets already scored.

Several processes (a multi-host run) run every stage together: sample, grade, eval and explain divide
their model calls between them and process 0 writes the files (``metacog_jax.multihost``); targets is
built by process 0 while the others wait; train shards its batches over the global mesh.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from metacog_jax import multihost
from metacog_jax.data import prompts
from metacog_jax.data.records import Question

log = logging.getLogger(__name__)


# -- questions ------------------------------------------------------------------------------------------
def load_domain_questions(config, data_workdir: Path) -> dict[str, list[Question]]:
    """In-domain: n_train train + n_test test questions; out-of-domain: n_test test questions.

    With ``data.evaluate_on="validation"`` (choosing settings) the evaluated questions come from the
    validation carve of the train split (``data.validation_fraction``) and are labelled "test" for the
    later stages; training uses the rest of train; no test question is loaded."""
    import dataclasses

    from metacog_jax.data.sources import load_questions, tfds_dir_for

    manual = config.data.manual_dir or None
    out = {}
    d = config.data
    held_out = "validation" if d.evaluate_on == "validation" else "test"
    v = d.validation_fraction if held_out == "validation" else 0.0
    kw = dict(seed=config.seed, test_fraction=d.test_fraction, levels=tuple(d.procedural_levels),
              validation_fraction=v, custom=d.get("custom"))  # sets declared in the config (data.custom)
    where = tfds_dir_for(config, data_workdir)

    def evaluated(name: str) -> list[Question]:
        n = d.n_test if name in d.domains or not d.n_test_ood else d.n_test_ood
        qs = load_questions(name, manual, where, held_out, n=n, **kw)
        return [dataclasses.replace(q, split="test") for q in qs] if held_out == "validation" else qs

    for name in d.domains:
        out[name] = load_questions(name, manual, where, "train", n=d.n_train, **kw) + evaluated(name)
    for name in d.ood_domains:
        if name in out:
            raise ValueError(f"config lists {name!r} both in data.domains and data.ood_domains")
        out[name] = evaluated(name)
    return out


# -- stages ---------------------------------------------------------------------------------------------
def stage_sample(config, data_workdir: str | Path, model=None) -> dict:
    """K samples per question at temperature T for every configured domain, graded and cached."""
    from metacog_jax.data.self_consistency import sample_questions
    from metacog_jax.models.build import build_model
    from metacog_jax.sampling import Sampler

    from metacog_jax.data import graders, records

    data_workdir = Path(data_workdir)
    loaded = model or build_model(config)
    sampler = Sampler(loaded.model, loaded.tokenizer, batch_size=config.sample.batch_size)
    grader = graders.make_grader(config, data_workdir, model=loaded)
    summaries = {}
    # Process 0 loads (and may build TFDS files); every process gets the same questions.
    domains = multihost.leader_value(lambda: load_domain_questions(config, data_workdir))
    for domain, questions in domains.items():
        s = config.sample
        path = data_workdir / "samples" / f"{domain}.jsonl"
        summary = sample_questions(sampler, questions, path, k=s.k,
                                   temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
                                   seed=config.seed, model_name=config.model.name,
                                   instruction=config.data.answer_instruction, grader=grader)
        # Lines resumed from a run graded otherwise (another config.grading) are graded again, so one file
        # never mixes two graders.
        regraded = graders.regrade_samples(path, {q.id: q for q in records.read_questions(summary.questions_path)},
                                           grader)
        text = summary.format()
        if "skipped" not in regraded:
            text += f"\n  re-graded with {regraded['grading']}: greedy accuracy {regraded['greedy_accuracy']}"
        log.info("%s: %s", domain, text)
        summaries[domain] = text
    return summaries


def stage_grade(config, data_workdir: str | Path, compare: tuple[str, str] | None = None,
                which: str = "all") -> dict:
    """Grade the cached samples again with ``config.grading`` (or compare two graders on them).

    Without ``compare``: every configured domain's samples file is re-graded and rewritten (answers,
    consistency, modal correctness; nothing is re-sampled), then the targets are rebuilt when a targets
    stage had run. Resumable: a file already graded with these settings is skipped and judge verdicts are
    cached. With ``compare=(a, b)`` (grader specs, ``graders.settings_from_config``): nothing is rewritten;
    Cohen's kappa between the two per domain goes to ``<data>/grading/compare_<a>_vs_<b>.json``.
    """
    from metacog_jax import artifacts
    from metacog_jax.data import graders
    from metacog_jax.data import targets as targets_lib

    data_workdir = Path(data_workdir)
    names = list(config.data.domains) + list(config.data.ood_domains)
    present = [n for n in names if (data_workdir / "samples" / f"{n}.jsonl").exists()]
    if not present:
        raise FileNotFoundError(f"no samples for {names} in {data_workdir / 'samples'}; run `metacog sample` first")
    samples, questions = targets_lib.load_sampled(data_workdir, domains=present)
    if compare is None:
        grader = graders.make_grader(config, data_workdir)
        out: dict = {"grading": grader.settings.name(), "domains": {}}
        for n in present:
            out["domains"][n] = graders.regrade_samples(data_workdir / "samples" / f"{n}.jsonl", questions, grader,
                                                        progress=True)
        if (data_workdir / "targets").exists():
            out["targets"] = stage_targets(config, data_workdir)
        multihost.leader_value(lambda: artifacts.write_json(data_workdir / "grading" / "grade.json", out))
        return out
    a_settings, b_settings = (graders.settings_from_config(config, spec) for spec in compare)
    a = graders.make_grader(config, data_workdir, a_settings)
    # One judge for both graders: the second reuses the first's model and verdicts.
    b = graders.Grader(b_settings, a.judge) if a.judge is not None else graders.make_grader(config, data_workdir,
                                                                                             b_settings)
    out = {"a": a_settings.name(), "b": b_settings.name(), "which": which, "domains": {}}
    for n in present:
        recs = [r for r in samples if r["domain"] == n]
        out["domains"][n] = graders.compare_graders(recs, questions, a, b, which=which, seed=config.seed,
                                                    progress=True)
    safe = lambda spec: "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in spec)
    path = data_workdir / "grading" / f"compare_{safe(compare[0])}_vs_{safe(compare[1])}.json"
    multihost.leader_value(lambda: artifacts.write_json(path, out))
    return out


def stage_targets(config, data_workdir: str | Path) -> dict:
    """Consistency-bin targets and pairs from the cached samples (in-domain train split for training).

    One process builds them (the bins are fitted on the whole train split); with several processes the
    others wait for it and return its summary."""
    return multihost.leader_value(lambda: _build_targets(config, data_workdir))


def _build_targets(config, data_workdir: str | Path) -> dict:
    from metacog_jax.data import targets as targets_lib
    from metacog_jax.experiment_config import domain_values

    data_workdir = Path(data_workdir)
    t = config.targets
    weights = domain_values(t.domain_weights, "targets.domain_weights", float)
    caps = domain_values(t.domain_caps, "targets.domain_caps", int)
    samples, questions = targets_lib.load_sampled(data_workdir, domains=list(config.data.domains))
    single, pairwise, summary = targets_lib.build_targets(
        samples, questions, n_bins=t.n_bins, jitter=t.jitter, mode=t.mode, balance=t.balance,
        balance_factor=t.balance_factor, max_per_bin=t.max_per_bin or None,
        pairs_per_question=t.pairs_per_question, pair_scope=t.pair_scope, pair_label=t.pair_label,
        per_domain_bins=t.per_domain_bins, seed=config.seed, domain_weights=weights, domain_caps=caps,
        pair_orders=t.pair_orders, answer_source=t.answer_source)
    targets_lib.write_targets(data_workdir, single, pairwise, summary)
    return summary


def make_batches(config, data_workdir: Path, tokenizer, split: str = "train"):
    """BatchBuilder over the targets of `split`, restricted to the config's task."""
    from metacog_jax.data import batching
    from metacog_jax.data import targets as targets_lib

    single, pairwise, _ = targets_lib.read_targets(data_workdir)
    samples, questions = targets_lib.load_sampled(data_workdir, domains=list(config.data.domains))
    scale = prompts.confidence_scale(config.data.confidence_scale)
    task = config.train.task
    if task == "single":
        pairwise, mix = [], 0.0
    elif task == "pairwise":
        single, mix = [], 1.0
    else:
        mix = config.train.mix
    enc_s, enc_p = batching.encode_targets(tokenizer, questions, single, pairwise, scale, split=split)
    if not enc_s and not enc_p:
        raise ValueError(f"no {split} targets for task {task!r} in {data_workdir / 'targets'}; run "
                         "`metacog targets` first")
    replay = []
    if config.train.replay > 0:  # the base model's greedy answers to the questions the tasks train on
        trained = {r["question_id"] for r in single if split is None or r["split"] == split}
        trained |= {q for r in pairwise if split is None or r["split"] == split for q in (r["q1"], r["q2"])}
        replay = batching.encode_replays(tokenizer, {q: questions[q] for q in trained if q in questions},
                                         samples, split=split, instruction=config.data.answer_instruction)
    lw = config.train.loss
    weights = batching.LossWeights(w_format=lw.format, w_answer=lw.answer, w_confidence=lw.confidence,
                                   w_choice=lw.choice, w_single=lw.single, w_pairwise=lw.pairwise,
                                   w_replay=lw.replay)
    builder = batching.BatchBuilder(
        enc_s, enc_p, batch_size=config.train.batch_size, max_len=config.train.max_len, mix=mix,
        packing=config.train.packing, seed=config.seed, weights=weights, shard_index=jax.process_index(),
        shard_count=jax.process_count(), skip_too_long=True,
        pad_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        replay=replay, replay_share=config.train.replay)
    label_info = batching.scale_decision_tokens(tokenizer, scale) if config.train.loss.brier > 0 else None
    return builder, label_info


class TrainingPreempted(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint; running the stage again resumes it."""


def stage_train(config, run_workdir: str | Path, data_workdir: str | Path | None = None,
                stop_after: int | None = None) -> dict:
    """Fine-tune on the targets. Raises TrainingPreempted when a SIGTERM stopped the run early (the
    checkpoint is saved), so that no caller goes on as if the model were trained."""
    from metacog_jax.models.build import tokenizer_for_config
    from metacog_jax.train.trainer import train

    run_workdir = Path(run_workdir)
    data_workdir = Path(data_workdir or run_workdir)
    if config.train.task == "none" or config.train.steps == 0:
        return {"skipped": "train.task is 'none' (base condition)"}
    tokenizer = tokenizer_for_config(config)
    builder, label_info = make_batches(config, data_workdir, tokenizer)
    log.info("batches: %s", builder.stats)
    ids, values = label_info if label_info is not None else (None, None)
    summary = train(config, run_workdir, builder, label_token_ids=ids, label_values=values, stop_after=stop_after,
                    tokenizer=tokenizer)
    summary.pop("model", None)
    if summary.get("preempted") and summary.get("end_step", 0) < config.train.steps:
        raise TrainingPreempted(f"{run_workdir}: training stopped by SIGTERM at step {summary.get('end_step')} of "
                                f"{config.train.steps}; the checkpoint is saved, run the command again to resume")
    summary["batch_stats"] = {k: v for k, v in dict(builder.stats).items() if not isinstance(v, (list, dict))}
    return summary


def eval_datasets(config, data_workdir: Path) -> tuple[dict, dict]:
    """{dataset: (test questions, base-model sample records)} and {dataset: role}."""
    from metacog_jax.data import targets as targets_lib

    names = list(config.data.domains) + list(config.data.ood_domains)
    samples, questions = targets_lib.load_sampled(data_workdir, domains=names)
    by_domain: dict[str, list] = {n: [] for n in names}
    for rec in samples:
        if rec["split"] == "test" and rec["domain"] in by_domain:
            by_domain[rec["domain"]].append(rec)
    datasets, roles = {}, {}
    for n in names:
        recs = by_domain[n]
        if not recs:
            raise ValueError(f"no test-split samples for dataset {n!r} in {data_workdir / 'samples'}; "
                             "run `metacog sample` first")
        datasets[n] = ([questions[r["id"]] for r in recs], recs)
        roles[n] = "in_domain" if n in config.data.domains else "out_of_domain"
    return datasets, roles


def regrade_greedy(sampler, questions: list[Question], records: list[dict], max_new_tokens: int,
                   instruction: str | None = None, grader=None) -> list[dict]:
    """Copies of `records` whose greedy answer comes from `sampler`'s model (a fine-tuned model answers
    for itself; consistency stays the base model's, which defines the pairwise ranking), graded by
    `grader` (``data/graders.py``; None = the default rule)."""
    from metacog_jax.data.graders import Grader
    from metacog_jax.sampling import SamplingParams

    ids = [sampler.tokenizer.encode(prompts.answer_prompt(sampler.tokenizer, q, instruction), add_special_tokens=False)
           for q in questions]
    gen = sampler.generate(ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                           jax.random.key(0))
    graded = (grader or Grader()).grade_many([(q, row[0].text) for q, row in zip(questions, gen.completions)])
    return [dict(rec, greedy={"text": row[0].text, "answer": g.normalized, "correct": g.correct, "grader": g.grader})
            for rec, row, g in zip(records, gen.completions, graded)]


def stage_eval(config, run_workdir: str | Path, data_workdir: str | Path | None = None) -> dict:
    """Score both tasks on every in-domain test set and out-of-domain set; write <run>/eval/."""
    from metacog_jax.evaluation.run import evaluate
    from metacog_jax.sampling import Sampler
    from metacog_jax.train.trainer import model_for_eval

    run_workdir = Path(run_workdir)
    data_workdir = Path(data_workdir or run_workdir)
    datasets, roles = eval_datasets(config, data_workdir)
    loaded, step = model_for_eval(config, run_workdir)
    sampler = Sampler(loaded.model, loaded.tokenizer, batch_size=config.sample.batch_size)
    if step > 0:
        from metacog_jax.data.graders import make_grader

        grader = make_grader(config, data_workdir)  # the judge (if any) is the config's judge, not this model
        datasets = {n: (qs, regrade_greedy(sampler, qs, recs, config.sample.max_new_tokens,
                                           config.data.answer_instruction, grader))
                    for n, (qs, recs) in datasets.items()}
    e = config.eval
    n_pairs = {n: (e.n_pairs_ood or e.n_pairs) if roles[n] == "out_of_domain" else e.n_pairs for n in datasets}
    metrics = evaluate(loaded.model, loaded.tokenizer, datasets, scale=config.data.confidence_scale,
                       role_of=roles, n_pairs=n_pairs, seed=config.seed, batch_size=e.batch_size,
                       n_resamples=e.n_resamples, out_dir=run_workdir / "eval", verbalized=e.verbalized,
                       sampler=sampler if e.verbalized else None, progress=True, resume=True,
                       tag=eval_model_tag(config, run_workdir, step))
    metrics["checkpoint_step"] = step
    return metrics


def eval_model_tag(config, run_workdir: str | Path, step: int) -> str:
    """What the evaluated model is, for the eval's resume fingerprint: the model config (name, dtypes, ...),
    the checkpoint step and, for a trained model, the training config and the checkpoint's directory and
    modification time, so another model, a retrained one or other training settings are scored afresh."""
    import json

    from metacog_jax.artifacts import json_ready

    what = {"model": config.model, "step": step}
    if step > 0:
        checkpoint = Path(run_workdir).absolute() / "checkpoints" / str(step)
        what["train"] = config.train
        what["checkpoint"] = [str(checkpoint), checkpoint.stat().st_mtime_ns if checkpoint.exists() else None]
    return json.dumps(json_ready(what), sort_keys=True)
