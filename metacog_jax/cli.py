"""`metacog` command line: parses flags and the config, then calls the library. No logic lives here.

    metacog sample   --config=configs/single.py:domains=gsm8k --workdir=runs/x
    metacog grade    --config=... --workdir=runs/x [--compare=containment,judge]
    metacog targets  --config=... --workdir=runs/x
    metacog train    --config=... --workdir=runs/x/S [--data_workdir=runs/x] [--config.train.lr=1e-5]
    metacog eval     --config=... --workdir=runs/x/S [--data_workdir=runs/x]
    metacog report   --run base=runs/x/base --run S=runs/x/S --out=runs/x/report
    metacog export   --config=... --workdir=runs/x/S --out=exported_hf_dir
    metacog explain  --config=... --workdir=runs/p2 [--domain=mmlu_pro --n=10]
    metacog gap      --items=items.jsonl --ratings=ratings.csv --out=gap/
    metacog study serve|invite|export|simulate --items=items.jsonl --db=study.sqlite [--port=8000 | --n=40 | ...]
    metacog demo     --config=configs/demo.py[:quick] --workdir=runs/demo [--data_dir=../shared/data]
    metacog tune     --config=configs/demo.py --workdir=runs/tune --grid train.lr=3e-4,1e-3
    metacog plan     --config=configs/multitask.py:model=llama3.1_8b --topology=v5e:4x4 [--json]

`metacog COMMAND --help` lists a command's flags. Every model stage (all commands but report, gap and
study) first runs the process start-up, metacog_jax.runtime.start_process (host allocator, compilation
cache, joining a multi-host run), then loads its config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

COMMANDS = ("sample", "grade", "targets", "train", "eval", "report", "export", "explain", "gap", "study", "demo", "tune",
            "plan")
# The commands that load an experiment config (--config); they are the model stages.
CONFIG_COMMANDS = ("sample", "grade", "targets", "train", "eval", "export", "explain", "demo", "tune", "plan")
DEFAULT_CONFIG = {"demo": "configs/demo.py"}

_HELP = {
    "sample": "K samples per question for every configured domain, graded (samples/, questions/)",
    "grade": "grade the cached samples again (config.grading) and rebuild the targets; or compare two graders",
    "targets": "confidence targets from the samples (targets/)",
    "train": "fine-tune on the targets (checkpoints/, train/)",
    "eval": "score a run on every test set (eval/)",
    "report": "tables and reliability diagrams comparing runs",
    "export": "a run as a Hugging Face directory, LoRA adapters merged",
    "explain": "paper 2: confidence explanations for the rating study",
    "gap": "paper 2: the gap between the model's confidence and the raters'",
    "study": "paper 2: serve the rating study, or export its responses",
    "demo": "every stage end to end on one config, resumable",
    "tune": "choose the answer instruction and training settings on a validation carve of train",
    "plan": "compile the steps for a TPU slice ahead of time: memory and cost per chip (needs the tpu extra)",
}
_FORMATTER = argparse.RawDescriptionHelpFormatter


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `metacog` parser: one sub-parser per command, each with only the flags that command reads.

    ``--config`` and ``--config.FIELD=VALUE`` are taken off the command line by
    ``config_utils.split_config_argv`` before argparse runs (overrides have open-ended names and may
    be space-separated); the config commands still declare ``--config`` so that their ``--help``
    documents it.

    Returns:
      ``(parser, sub_parsers)``: the top-level parser and each command's parser by name.
    """
    parser = argparse.ArgumentParser(prog="metacog", description=__doc__, formatter_class=_FORMATTER)
    # --verbose is accepted before the command too; the sub-parsers' copy leaves it alone unless given
    # there (SUPPRESS), since a sub-parser's default would otherwise overwrite the top-level value.
    parser.add_argument("--verbose", action="store_true", help="log at INFO level")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="log at INFO level")

    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    subs: dict[str, argparse.ArgumentParser] = {}

    def command(name: str, parents=(common,)) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=list(parents), help=_HELP[name], description=_HELP[name],
                                  formatter_class=_FORMATTER)
        subs[name] = sub
        return sub

    def stage(name: str, workdir_help: str, data_workdir: bool = False,
              data_dir: bool = False) -> argparse.ArgumentParser:
        """A config command: --config, --workdir and, where the stage reads them, the data flags."""
        sub = command(name)
        default = DEFAULT_CONFIG.get(name)
        sub.add_argument(
            "--config", metavar="FILE.py[:ARG]", default=None,
            help="the experiment config, e.g. configs/single.py:domains=gsm8k (ARG goes to its "
                 "get_config); --config.FIELD=VALUE overrides one field (repeatable), e.g. "
                 "--config.train.lr=1e-5" + (f"; default {default}" if default else "; required"))
        sub.add_argument("--workdir", default="runs/default", help=f"{workdir_help} (default: %(default)s)")
        if data_workdir:
            sub.add_argument("--data_workdir", default=None,
                             help="where samples/ and targets/ live (default: --workdir)")
        if data_dir:
            sub.add_argument("--data_dir", default=None,
                             help="offline copy of the official benchmark files (sets config.data.manual_dir)")
        return sub

    stage("sample", "data directory: samples/, questions/ (config.sample.json)", data_workdir=True,
          data_dir=True)
    grade = stage("grade", "data directory: samples/ graded again, grading/ (config.grade.json)", data_workdir=True)
    grade.add_argument("--compare", default=None, metavar="A,B",
                       help="compare two graders instead of re-grading: containment, exact, f1, f1:0.6, judge, "
                            "rule_then_judge or config (the judge is config.grading.judge); prints Cohen's kappa")
    grade.add_argument("--which", default="all", choices=("all", "greedy", "samples"),
                       help="answers compared by --compare (default: %(default)s)")
    stage("targets", "data directory: targets/ from its samples/ (config.targets.json)", data_workdir=True)
    stage("train", "run directory: checkpoints/, train/", data_workdir=True)
    stage("eval", "run directory: reads checkpoints/ (base condition: none), writes eval/", data_workdir=True)

    report = command("report")
    report.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="a run to compare (repeatable); NAME is its condition in the tables")
    report.add_argument("--out", default=None, help="output directory (default: report)")

    export = stage("export", "run directory to export")
    export.add_argument("--out", default=None, help="output directory (default: WORKDIR/hf_export)")

    explain = stage("explain", "run directory: explain/", data_dir=True)
    explain.add_argument("--domain", default="mmlu_pro", help="domain to draw items from (default: %(default)s)")
    explain.add_argument("--n", type=int, default=10, help="number of items (default: %(default)s)")

    gap = command("gap")
    gap.add_argument("--items", default=None, help="items.jsonl written by `metacog explain`")
    gap.add_argument("--ratings", default=None, help="ratings.csv written by `metacog study export`")
    gap.add_argument("--out", default=None, help="output directory (default: gap)")
    gap.add_argument("--theta", default=None, metavar="T1,T2",
                     help="selection-rule thresholds for the post-hoc selection (default: cross-fitted)")
    gap.add_argument("--folds", type=int, default=5, help="folds of the items for cross-fitting θ (default: %(default)s)")
    gap.add_argument("--resamples", type=int, default=1000,
                     help="bootstrap resamples behind every interval (default: %(default)s)")

    study = command("study")
    actions = study.add_subparsers(dest="action", title="actions", metavar="ACTION")
    serve = actions.add_parser("serve", parents=[common], help="run the rating web app",
                               formatter_class=_FORMATTER)
    serve.add_argument("--items", default=None, help="items.jsonl written by `metacog explain`")
    serve.add_argument("--db", default=None, help="SQLite file for the responses (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    serve.add_argument("--conditions", default="default,selected",
                       help="comma-separated conditions, 'selected' or style names (default: %(default)s)")
    serve.add_argument("--items_per_participant", type=int, default=None,
                       help="real items each participant rates (default: all)")
    serve.add_argument("--attention_checks", type=int, default=2,
                       help="attention checks per participant (default: %(default)s)")
    serve.add_argument("--seed", type=int, default=0, help="with the participant id, fixes each order "
                                                           "(default: %(default)s)")
    serve.add_argument("--entry", default="link", choices=("link", "invite", "code"),
                       help="how participants arrive: link (the platform's ids in the URL), invite (single-use "
                            "tokens from `study invite`) or code (typed; anyone who knows a code gets that "
                            "session) (default: %(default)s)")
    serve.add_argument("--link_params", default="PROLIFIC_PID,STUDY_ID,SESSION_ID",
                       help="the link's participant, study and session query parameters (default: %(default)s)")
    serve.add_argument("--completion_code", default=None, help="code shown on the end page")
    serve.add_argument("--completion_url", default=None,
                       help="the platform's completion address, opened from the end page, e.g. "
                            "https://app.prolific.com/submissions/complete?cc=CODE")
    serve.add_argument("--expiry_minutes", type=float, default=60.0,
                       help="a participant neither finished nor active this long stops counting for condition "
                            "balance (default: %(default)s)")
    study_sim = actions.add_parser("simulate", parents=[common], formatter_class=_FORMATTER,
                                   help="drive simulated participants over HTTP against a running study (a check)")
    study_sim.add_argument("--url", default="http://127.0.0.1:8000", help="the study server (link entry) "
                                                                         "(default: %(default)s)")
    study_sim.add_argument("--items", default=None, help="the items.jsonl the server shows")
    study_sim.add_argument("--n", type=int, default=20, help="participants (default: %(default)s)")
    study_sim.add_argument("--concurrency", type=int, default=8, help="at the same time (default: %(default)s)")
    study_sim.add_argument("--noise_sd", type=float, default=0.1, help="rating noise (default: %(default)s)")
    study_sim.add_argument("--no_style_effect", action="store_true",
                           help="a negative control: ratings do not depend on the explanation's style")
    study_sim.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    study_sim.add_argument("--out", default=None, help="CSV of what was submitted (default: simulated.csv)")
    study_invite = actions.add_parser("invite", parents=[common], help="make single-use invitation links",
                                      formatter_class=_FORMATTER)
    study_invite.add_argument("--db", default=None, help="the study's SQLite file (created if missing)")
    study_invite.add_argument("--n", type=int, default=None, help="number of invitations")
    study_invite.add_argument("--base_url", default="http://127.0.0.1:8000",
                              help="the study's public address (default: %(default)s)")
    study_invite.add_argument("--out", default=None, help="file for the links, one a line (default: invites.txt)")
    study_export = actions.add_parser("export", parents=[common], help="write the responses as CSV",
                                      formatter_class=_FORMATTER)
    study_export.add_argument("--db", default=None, help="the study's SQLite file")
    study_export.add_argument("--out", default=None, help="CSV file (default: ratings.csv)")

    stage("demo", "demo directory: data/, one run per condition, report/", data_dir=True)
    tune = stage("tune", "tuning directory: data_T<t>/ per sampling temperature, runs_T<t>/ (base and one run "
                         "per grid point and task), tune.md", data_dir=True)
    tune.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                      help="config values to try (repeatable; the grid is their product), e.g. train.lr=3e-4,1e-3")
    tune.add_argument("--tasks", default="single,pairwise", help="tasks trained at each point (default: %(default)s)")
    tune.add_argument("--no_instructions", action="store_true", help="keep the config's answer instruction")
    tune.add_argument("--temperatures", default="", metavar="T1,T2",
                      help="sampling temperatures to compare by how well their targets track greedy correctness "
                           "(e.g. 1.0,0.7,0.5; default: keep the config's)")
    plan = command("plan")
    plan.add_argument("--config", metavar="FILE.py[:ARG]", default=None,
                      help="the experiment config whose steps are compiled (model preset, mesh, batch sizes, "
                           "LoRA or full); --config.FIELD=VALUE overrides one field; required")
    plan.add_argument("--topology", required=True, metavar="GEN:AxB[xC]",
                      help="the TPU slice, e.g. v5e:4x4, v5p:4x4x2, v6e:2x4, v4:2x2x2")
    plan.add_argument("--steps", default=",".join(_plan_steps("default")),
                      help=f"comma-separated, among {','.join(_plan_steps('all'))} (default: %(default)s)")
    plan.add_argument("--prompt_len", type=int, default=256,
                      help="prompt tokens for the sampler's and scorer's steps (default: %(default)s)")
    plan.add_argument("--num_layers", type=int, default=None,
                      help="compile this many layers instead of the model's (a quicker look)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON instead of the table")
    return parser, subs


def _plan_steps(which: str) -> tuple[str, ...]:
    from metacog_jax import plan

    return plan.DEFAULT_STEPS if which == "default" else plan.STEPS


def _plan(args, spec, overrides) -> int:
    """`metacog plan`: no process start-up (nothing runs, nothing joins a pod, no compilation cache)."""
    from metacog_jax import plan as plan_lib

    config = _config(spec, overrides, "plan")
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if not args.json else None
    try:
        result = plan_lib.plan(config, args.topology, steps=steps, prompt_len=args.prompt_len,
                               num_layers=args.num_layers, progress=log)
    except plan_lib.MissingTpuExtra as e:
        print(f"metacog plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        from metacog_jax.artifacts import json_ready

        print(json.dumps(json_ready(result.to_json()), indent=1))
    else:
        print(plan_lib.format_plan(result))
    return 0 if result.fits else 1


def _config(spec, overrides, command):
    from metacog_jax.config_utils import load_config
    from metacog_jax.experiment_config import validate

    spec = spec or DEFAULT_CONFIG.get(command)
    if spec is None:
        raise SystemExit(f"metacog {command}: --config=configs/<file>.py[:arg] is required")
    c = load_config(spec, overrides)
    validate(c)
    return c


def _quiet_logs(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("metacog_jax").setLevel(logging.INFO)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax is chatty at INFO
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run `metacog ARGV`; returns the exit status (2 for bad input, with the reason on stderr)."""
    from metacog_jax.config_utils import split_config_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subs = build_parser()
    try:
        spec, overrides, rest = split_config_argv(argv)
    except ValueError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    cmd = args.command
    if cmd in CONFIG_COMMANDS:
        # argparse never sees --config (split off above) unless abbreviated (--conf=...).
        spec = spec if spec is not None else args.config
    elif spec is not None or overrides:
        given = ([f"--config={spec}"] if spec is not None else []) + [f"--config.{o}" for o in overrides]
        subs[cmd].error(f"unrecognized arguments: {' '.join(given)} (metacog {cmd} takes no config)")
    _quiet_logs(args.verbose)
    from metacog_jax.pipeline import TrainingPreempted

    try:
        return _run(cmd, args, spec, overrides)
    except TrainingPreempted as e:
        print(f"metacog {cmd}: {e}", file=sys.stderr)
        return 143  # 128 + SIGTERM, as if the signal had ended the process
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metacog {cmd}: error: {msg}", file=sys.stderr)
        return 2


def _run(cmd, args, spec, overrides) -> int:
    if cmd == "plan":
        return _plan(args, spec, overrides)
    from metacog_jax import pipeline, runtime

    if cmd == "report":
        from metacog_jax.evaluation.report import build_report, format_main_table

        runs = dict(r.split("=", 1) for r in args.run)
        if not runs:
            raise ValueError("report needs at least one --run NAME=RUN_DIR")
        report = build_report(runs, args.out or "report")
        print(format_main_table(report))
        print(f"\nreport: {Path(args.out or 'report') / 'report.md'}")
        return 0
    if cmd == "gap":
        from metacog_jax.perception import gap

        if not (args.items and args.ratings):
            raise ValueError("gap needs --items=items.jsonl and --ratings=ratings.csv")
        theta = None
        if args.theta is not None:
            try:
                theta = tuple(float(v) for v in args.theta.split(","))
            except ValueError:
                theta = ()
            if len(theta) != 2:
                raise ValueError(f"--theta={args.theta!r}: expected two numbers T1,T2 (e.g. 0.4,0.6)")
        if args.resamples < 1:
            raise ValueError(f"--resamples={args.resamples}: expected at least 1")
        result = gap.gap_report(gap.read_items_jsonl(args.items), gap.read_ratings_csv(args.ratings),
                                args.out or "gap", n_resamples=args.resamples, theta=theta, n_folds=args.folds)
        print((Path(args.out or "gap") / "gap.md").read_text())
        return 0 if result else 1
    if cmd == "study":
        from metacog_jax import artifacts
        from metacog_jax.perception import study

        if args.action not in ("serve", "export", "invite", "simulate"):
            raise ValueError("study needs an action: serve, invite, export or simulate")
        if args.action == "simulate":
            import csv
            import dataclasses

            from metacog_jax.perception import simulate

            if not args.items:
                raise ValueError("study simulate needs --items=items.jsonl (the file the server shows)")
            bias = simulate.NO_STYLE_EFFECT if args.no_style_effect else simulate.DEFAULT_BIAS
            done = simulate.run_participants(args.url, [i.to_record() for i in study.load_items(args.items)],
                                             args.n, concurrency=args.concurrency, bias=bias,
                                             noise_sd=args.noise_sd, seed=args.seed)
            out = Path(args.out or "simulated.csv")
            with artifacts.atomic_output(out, newline="") as f:
                writer = csv.DictWriter(f, fieldnames=[x.name for x in dataclasses.fields(simulate.Submitted)])
                writer.writeheader()
                writer.writerows(dataclasses.asdict(x) for x in done)
            print(f"{args.n} simulated participants submitted {len(done)} answers to {args.url}; written to {out}")
            return 0
        if not args.db:
            raise ValueError("study needs --db=study.sqlite")
        if args.action == "invite":
            if args.n is None:
                raise ValueError("study invite needs --n (the number of invitations)")
            out = Path(args.out or "invites.txt")
            links = [f"{args.base_url.rstrip('/')}/?invite={t}" for t in study.create_invites(args.db, args.n)]
            artifacts.write_text(out, "".join(l + "\n" for l in links))
            print(f"wrote {len(links)} single-use invitation links to {out} (they are not stored anywhere else)")
            return 0
        if args.action == "export":
            n = study.export_csv(args.db, args.out or "ratings.csv")
            print(f"wrote {n} responses to {args.out or 'ratings.csv'}")
            return 0
        if not args.items:
            raise ValueError("study serve needs --items=items.jsonl")
        conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
        study.serve(args.items, args.db, host=args.host, port=args.port, conditions=conditions,
                    n_items_per_participant=args.items_per_participant, attention_checks=args.attention_checks,
                    seed=args.seed, entry=args.entry, link_params=tuple(args.link_params.split(",")),
                    completion_code=args.completion_code, completion_url=args.completion_url,
                    expiry_minutes=args.expiry_minutes)
        return 0

    # A model stage: start the process (allocator, compilation cache, multi-host join) before the config
    # is loaded or any device is touched.
    runtime.start_process()
    config = _config(spec, overrides, cmd)
    if getattr(args, "data_dir", None) is not None:
        config.data.manual_dir = args.data_dir
    workdir = Path(args.workdir)
    data_workdir = Path(args.data_workdir) if getattr(args, "data_workdir", None) else workdir
    if cmd == "demo":
        from metacog_jax.demo import run_demo

        run_demo(config, workdir)
        return 0
    if cmd == "tune":
        from metacog_jax.tuning import format_tune, run_tune

        try:
            temperatures = tuple(float(t) for t in args.temperatures.split(",") if t)
        except ValueError:
            raise ValueError(f"--temperatures={args.temperatures!r}: expected numbers like 1.0,0.7") from None
        out = run_tune(config, workdir, args.grid, tuple(t for t in args.tasks.split(",") if t),
                       instructions=not args.no_instructions, temperatures=temperatures)
        print(format_tune(out))
        return 0
    from metacog_jax import multihost
    from metacog_jax.config_utils import save_config

    workdir.mkdir(parents=True, exist_ok=True)
    if multihost.is_writer():  # one writer in a multi-host run
        save_config(config, workdir / f"config.{cmd}.json")
    if cmd == "sample":
        for domain, text in pipeline.stage_sample(config, data_workdir).items():
            print(f"{domain}: {text}")
    elif cmd == "grade":
        compare = None
        if args.compare is not None:
            compare = tuple(x.strip() for x in args.compare.split(","))
            if len(compare) != 2 or not all(compare):
                raise ValueError(f"--compare={args.compare!r}: expected two graders A,B (e.g. containment,judge)")
        print(_format_grade(pipeline.stage_grade(config, data_workdir, compare, which=args.which)))
    elif cmd == "targets":
        from metacog_jax.data.targets import format_summary

        print(format_summary(pipeline.stage_targets(config, data_workdir)))
    elif cmd == "train":
        summary = pipeline.stage_train(config, workdir, data_workdir)
        print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=1, default=str))
    elif cmd == "eval":
        metrics = pipeline.stage_eval(config, workdir, data_workdir)
        print(f"wrote {workdir / 'eval' / 'metrics.json'} ({len(metrics.get('datasets', {}))} datasets)")
    elif cmd == "export":
        from metacog_jax.export import export_run

        out = export_run(config, workdir, args.out or str(workdir / "hf_export"))
        print(f"exported a Hugging Face directory to {out}")
    elif cmd == "explain":
        from metacog_jax.perception.explain import run_explain

        path = run_explain(config, workdir, domain=args.domain, n=args.n)
        print(f"wrote {path}")
    return 0


def _format_grade(out: dict) -> str:
    """A few lines per domain: what a re-grade changed, or how two graders agree."""
    lines = []
    if "a" in out:
        lines.append(f"A = {out['a']}, B = {out['b']} ({out['which']} answers)")
        for ds, r in out["domains"].items():
            k, t = r["kappa"], r["table"]
            fmt = lambda v: "n/a" if v is None or v != v else f"{v:.3f}"
            lines.append(f"{ds}: {r['n_answers']} answers of {r['n_questions']} questions; Cohen's kappa "
                         f"{fmt(k['estimate'])} [{fmt(k['low'])}, {fmt(k['high'])}], agreement "
                         f"{fmt(r['agreement']['estimate'])}; accuracy A {fmt(r['accuracy_a']['estimate'])}, "
                         f"B {fmt(r['accuracy_b']['estimate'])}; both right {t['both_right']}, A only {t['a_only']}, "
                         f"B only {t['b_only']}, both wrong {t['both_wrong']}")
        return "\n".join(lines)
    lines.append(f"graded with {out['grading']}")
    for ds, r in out["domains"].items():
        by = ", ".join(f"{k} {n}" for k, n in r["decided_by"].items())
        if "skipped" in r:
            lines.append(f"{ds}: {r['questions']} questions, {r['skipped']} ({by})")
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
        lines.append(f"{ds}: {r['questions']} questions, {r['answers']} answers; greedy accuracy "
                     f"{fmt(r['greedy_accuracy_before'])} -> {fmt(r['greedy_accuracy'])}, modal accuracy "
                     f"{fmt(r['modal_accuracy_before'])} -> {fmt(r['modal_accuracy'])}; {r['greedy_changed']} greedy "
                     f"and {r['samples_changed']} sampled grades changed; decided by: {by}")
    if "targets" in out:
        lines.append("targets rebuilt from the new grades")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
