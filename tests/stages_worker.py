"""Runs the sample, grade, eval and explain stages on the tiny random model in its own process (not
collected by pytest); tests/test_multihost_stages.py starts one copy, or two joined by jax.distributed.

usage: python tests/stages_worker.py WORKDIR '{"stages": [...], "stop_at": ["dataset", 2], "tokenizer": DIR}'
  stages: run in the order given: sample, grade, eval, explain, and sample_global (sample again into
    WORKDIR/global with the model sharded over every process's devices, config.mesh, instead of a
    replica per process).
  stop_at: [what, n] stops the stage running when call n of `what` starts (an exception on every
    process, reported as {"stopped": true}); the next stage in the list runs. `what`: "generate"
    (Sampler.generate, one per sampling round) or "dataset" (one eval dataset).
  stop_explain_at: n stops the first explain stage when its n-th Sampler.generate call starts (the same way).
  tokenizer: a Hugging Face tokenizer directory to use instead of the GGUF's (faster to load).
Env: METACOG_* for multi-process runs; XLA_FLAGS for fake devices; METACOG_COMPILATION_CACHE.
Prints one line per finished stage: RESULT {json}.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    workdir, spec = Path(sys.argv[1]), json.loads(sys.argv[2])
    from metacog_jax import runtime

    runtime.maybe_initialize_distributed()
    runtime.enable_compilation_cache()  # the test points every launch at one cache
    import time

    import jax

    from metacog_jax import pipeline
    from metacog_jax.config_utils import load_config
    from metacog_jax.evaluation import run as eval_run
    from metacog_jax.sampling import Sampler

    calls = {"generate": 0, "dataset": 0}
    stop_at = spec.get("stop_at")
    explain_stop = {"at": None, "pending": spec.get("stop_explain_at")}  # generate call number to stop at

    class Stopped(Exception):
        pass

    def counted(what, fn):
        def wrapper(*args, **kwargs):
            calls[what] += 1
            if stop_at and stop_at[0] == what and calls[what] == stop_at[1]:
                raise Stopped(f"stopped at {what} call {calls[what]}")
            if what == "generate" and calls[what] == explain_stop["at"]:
                raise Stopped(f"explain stopped at generate call {calls[what]}")
            return fn(*args, **kwargs)
        return wrapper

    Sampler.generate = counted("generate", Sampler.generate)
    eval_run._evaluate_dataset = counted("dataset", eval_run._evaluate_dataset)

    # One model per config for the whole run (sample and eval build the same one): one compile fewer.
    from metacog_jax.models import build
    from metacog_jax.train import trainer

    built, build_model = {}, build.build_model

    def memo_build_model(c, mesh=None, tokenizer=None):
        key = (c.model.to_json(), c.seed, mesh)
        if tokenizer is not None or key not in built:
            built[key] = build_model(c, mesh=mesh, tokenizer=tokenizer)
        return built[key]

    build.build_model = trainer.build_model = memo_build_model

    # The base condition (nothing trained): eval scores the model as built.
    tokenizer = [f"model.tokenizer={spec['tokenizer']}"] if spec.get("tokenizer") else []
    config = load_config(str(REPO / "configs" / "tiny.py") + ":task=base",
                         ["data.n_train=8", "data.n_test=8", "sample.batch_size=4", "eval.n_pairs=6", *tokenizer])

    def report(stage: str, t0: float, **values) -> None:  # one line per finished stage
        print("RESULT " + json.dumps({"stage": stage, "process": jax.process_index(),
                                      "process_count": jax.process_count(),
                                      "seconds": round(time.perf_counter() - t0, 1), **values}), flush=True)

    def run_stage(stage: str) -> None:
        t0, before = time.perf_counter(), dict(calls)
        if stage in ("sample", "sample_global"):
            model, workdir_ = None, workdir
            if stage == "sample_global":  # the model fsdp-sharded over every device of every process
                from flax import nnx

                from metacog_jax.models.build import build_model, mesh_from_config

                model, workdir_ = build_model(config, mesh=mesh_from_config(config)), workdir / "global"
                assert not all(x.is_fully_addressable for x in jax.tree.leaves(nnx.state(model.model)))
            stage_config = config
            if stage == "sample_global":  # the in-domain questions only: fewer programs to compile
                stage_config = copy.deepcopy(config)
                stage_config.data.ood_domains = ()
            summaries = pipeline.stage_sample(stage_config, workdir_, model=model)
            values = {}
            if model is not None:  # the scorer on the sharded model against this process's replica
                import numpy as np

                from metacog_jax.evaluation import scoring

                replica = build.build_model(config)
                prefixes = [replica.tokenizer.encode(f"Question {i}: what is {i} + {i * i}? Answer:") for i in range(6)]
                labels = [[17], [18], [19, 20]]
                got, want = (scoring.label_logprobs(m.model, prefixes, labels, batch_size=4)
                             for m in (model, replica))
                values["scorer_max_abs_diff"] = float(np.max(np.abs(got - want)))
            report(stage, t0, generate_calls=calls["generate"] - before["generate"], **values,
                   summaries={d: text.split("\n")[0].split(": ", 1)[1] for d, text in summaries.items()})
        elif stage == "grade":
            config.unlock()
            config.grading.open_rule = "exact"  # another rule than sampling's: every file is graded again
            graded = pipeline.stage_grade(config, workdir)
            report(stage, t0, domains={d: {k: v for k, v in s.items() if k != "path"}
                                       for d, s in graded["domains"].items()})
        elif stage == "eval":
            metrics = pipeline.stage_eval(config, workdir)
            report(stage, t0, datasets_scored=calls["dataset"] - before["dataset"],
                   ece={n: d["single"]["metrics"]["ece"]["estimate"] for n, d in metrics["datasets"].items()})
        elif stage == "explain":
            from metacog_jax.perception.explain import run_explain

            explain_config = load_config(str(REPO / "configs" / "explain.py") + ":tiny",
                                         ["explain.pool_size=4", *tokenizer])
            if explain_stop["pending"]:  # this run is stopped part-way (once)
                explain_stop["at"], explain_stop["pending"] = calls["generate"] + explain_stop["pending"], None
            try:
                path = run_explain(explain_config, workdir, domain="comparison", n=2)
            finally:
                explain_stop["at"] = None
            summary = json.loads((path.parent / "summary.json").read_text())
            report(stage, t0, items=sum(1 for _ in open(path)), from_cache=summary["from_cache"],
                   generate_calls=calls["generate"] - before["generate"])
        else:
            raise ValueError(f"unknown stage {stage!r}")

    for stage in spec["stages"]:
        try:
            run_stage(stage)
        except Stopped:
            print("RESULT " + json.dumps({"stage": stage, "process": jax.process_index(), "stopped": True}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
