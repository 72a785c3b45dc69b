"""`metacog` command line: parses flags and the config, then calls the library. No logic lives here.

    metacog sample   --config=configs/single.py:domains=gsm8k --workdir=runs/x
    metacog targets  --config=... --workdir=runs/x
    metacog train    --config=... --workdir=runs/x/S [--data_workdir=runs/x] [--config.train.lr=1e-5]
    metacog eval     --config=... --workdir=runs/x/S [--data_workdir=runs/x]
    metacog report   --run base=runs/x/base --run S=runs/x/S --out=runs/x/report
    metacog export   --config=... --workdir=runs/x/S --out=exported_hf_dir
    metacog explain  --config=... --workdir=runs/p2 [--domain=mmlu_pro --n=10]
    metacog gap      --items=items.jsonl --ratings=ratings.csv --out=gap/
    metacog study serve|export --items=items.jsonl --db=study.sqlite [--port=8000 | --out=ratings.csv]
    metacog demo     --config=configs/demo.py[:quick] --workdir=runs/demo [--data_dir=../shared/data]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

COMMANDS = ("sample", "targets", "train", "eval", "report", "export", "explain", "gap", "study", "demo")
DEFAULT_CONFIG = {"demo": "configs/demo.py"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metacog", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS)
    p.add_argument("action", nargs="?", help="study: serve | export")
    p.add_argument("--workdir", default="runs/default")
    p.add_argument("--data_workdir", default=None, help="where samples/targets live (default: --workdir)")
    p.add_argument("--data_dir", default=None, help="offline copy of the official benchmark files")
    p.add_argument("--run", action="append", default=[], help="report: NAME=RUN_DIR (repeatable)")
    p.add_argument("--out", default=None)
    p.add_argument("--items", default=None)
    p.add_argument("--ratings", default=None)
    p.add_argument("--db", default=None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--domain", default="mmlu_pro")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--verbose", action="store_true")
    return p


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
    from metacog_jax.config_utils import split_config_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    spec, overrides, rest = split_config_argv(argv)
    args = _parser().parse_args(rest)
    _quiet_logs(args.verbose)
    cmd = args.command
    try:
        return _run(cmd, args, spec, overrides)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metacog {cmd}: error: {msg}", file=sys.stderr)
        return 2


def _run(cmd, args, spec, overrides) -> int:
    from metacog_jax import pipeline

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
        result = gap.gap_report(gap.read_items_jsonl(args.items), gap.read_ratings_csv(args.ratings),
                                args.out or "gap")
        print((Path(args.out or "gap") / "gap.md").read_text())
        return 0 if result else 1
    if cmd == "study":
        from metacog_jax.perception import study

        if args.action not in ("serve", "export"):
            raise ValueError("study needs an action: serve or export")
        if not args.db:
            raise ValueError("study needs --db=study.sqlite")
        if args.action == "export":
            n = study.export_csv(args.db, args.out or "ratings.csv")
            print(f"wrote {n} responses to {args.out or 'ratings.csv'}")
            return 0
        if not args.items:
            raise ValueError("study serve needs --items=items.jsonl")
        study.serve(args.items, args.db, host=args.host, port=args.port)
        return 0

    from metacog_jax.sharding import enable_compilation_cache, tune_host_allocator

    tune_host_allocator()
    enable_compilation_cache()
    config = _config(spec, overrides, cmd)
    if args.data_dir is not None:
        config.data.manual_dir = args.data_dir
    workdir = Path(args.workdir)
    data_workdir = Path(args.data_workdir) if args.data_workdir else workdir
    if cmd == "demo":
        from metacog_jax.demo import run_demo

        run_demo(config, workdir)
        return 0
    from metacog_jax.config_utils import save_config

    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / f"config.{cmd}.json")
    if cmd == "sample":
        for domain, text in pipeline.stage_sample(config, data_workdir).items():
            print(f"{domain}: {text}")
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


if __name__ == "__main__":
    sys.exit(main())
