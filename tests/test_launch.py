"""Tests for launch/: exact dry-run commands for a TPU pod, GPU hosts, and sweeps."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "launch"))

import gpu_multihost  # noqa: E402
import steps  # noqa: E402
import sweep  # noqa: E402
import tpu_vm  # noqa: E402

POD = tpu_vm.TpuVm(name="mc-pod", zone="us-central2-b", project="proj", accelerator_type="v4-16")
TRAIN = ["train", "--config=configs/multitask.py:domains=gsm8k", "--config.train.lr=1e-5",
         "--workdir=gs://bucket/exp1"]


# --- argv split --------------------------------------------------------------------


def test_split_metacog_argv_at_the_first_double_dash():
    launcher, metacog = steps.split_metacog_argv(("--hosts=a,b", "--dry_run", "--", *TRAIN, "--", "x"))
    assert launcher == ["--hosts=a,b", "--dry_run"]
    assert metacog == [*TRAIN, "--", "x"]  # a later -- belongs to the metacog command
    assert steps.split_metacog_argv(["--hosts=a"]) == (["--hosts=a"], [])
    assert steps.split_metacog_argv(["--hosts=a", "--"]) == (["--hosts=a"], [])
    assert steps.split_metacog_argv(["--", "eval"]) == ([], ["eval"])


# --- TPU VM ------------------------------------------------------------------------


def test_tpu_pod_all_dry_run_exact_commands():
    steps = tpu_vm.plan("all", POD, TRAIN, run_name="exp1", local_dir="logs", delete_after=True,
                        repo_root=REPO)
    lines = [step.shell() for step in steps]
    where = "--zone=us-central2-b --project=proj"
    assert lines[0] == (
        f"gcloud compute tpus tpu-vm describe mc-pod {where} '--format=value(state)' >/dev/null 2>&1 || "
        f"gcloud compute tpus tpu-vm create mc-pod {where} --accelerator-type=v4-16 --version=tpu-ubuntu2204-base")
    assert lines[1].startswith("# local: pack ")
    tarball = tpu_vm.source_tarball(POD)
    assert lines[2] == f"gcloud compute tpus tpu-vm scp {tarball} mc-pod:metacog_src_mc-pod.tgz {where} --worker=all"
    install = shlex.split(lines[3])
    assert install[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mc-pod", "--zone=us-central2-b",
                           "--project=proj"]
    assert install[8] == "--worker=all"
    assert install[9] == "--command=" + tpu_vm.install_script(POD)
    run = shlex.split(lines[4])
    assert run[8] == "--worker=all"
    assert run[9] == "--command=" + "\n".join([
        "set -eo pipefail",
        '. "$HOME"/metacog_venv/bin/activate',
        'cd "$HOME"/metacog_jax',
        'mkdir -p "$HOME"/metacog_logs/exp1',
        "status=0; METACOG_DISTRIBUTED=auto metacog train --config=configs/multitask.py:domains=gsm8k "
        "--config.train.lr=1e-5 --workdir=gs://bucket/exp1 2>&1 | "
        'tee "$HOME"/metacog_logs/exp1/"$(hostname)".log || status=$?',
        "exit $status",
    ])
    assert lines[5:] == [
        "mkdir -p logs/exp1",
        f"gcloud compute tpus tpu-vm scp 'mc-pod:metacog_logs/exp1/*' logs/exp1/ {where} --worker=all --recurse",
        f"gcloud compute tpus tpu-vm delete mc-pod {where} --quiet",
    ]
    # Every command that touches the workers addresses all of them.
    for line in lines:
        if " ssh " in line or " scp " in line:
            assert "--worker=all" in line and "--worker=0" not in line


def test_install_script_installs_tpu_jax_from_sources():
    script = tpu_vm.install_script(POD)
    assert 'tar -xzf "$HOME"/metacog_src_mc-pod.tgz -C "$HOME"/metacog_jax' in script
    assert "uv venv --allow-existing --python 3.11" in script
    assert "uv pip install $constraints -e . 'jax[tpu]==0.10.2'" in script
    cloned = tpu_vm.install_script(tpu_vm.TpuVm(name="x", zone="z", repo_url="https://g/r.git", repo_ref="v1"))
    assert 'git clone --depth 1 --branch v1 https://g/r.git "$HOME"/metacog_jax' in cloned
    assert "tar -xzf" not in cloned


def test_tpu_run_detached_and_bucket_logs():
    vm = tpu_vm.TpuVm(name="v", zone="z", log_bucket="gs://b/logs/")
    script = tpu_vm.run_script(vm, ["eval", "--workdir=w"], "r1", env={"XLA_FLAGS": "--a --b"}, detach=True)
    assert "nohup bash -c " in script and script.rstrip().endswith('echo "started on $(hostname)"')
    nohup_line = next(line for line in script.splitlines() if line.startswith("nohup "))
    words = shlex.split(nohup_line)
    assert words[:3] == ["nohup", "bash", "-c"]
    inner = words[3]
    assert inner == ("METACOG_DISTRIBUTED=auto XLA_FLAGS='--a --b' metacog eval --workdir=w > "
                     '"$HOME"/metacog_logs/r1/"$(hostname)".log 2>&1; gcloud storage cp '
                     '"$HOME"/metacog_logs/r1/"$(hostname)".log gs://b/logs/r1/')
    collect = [s.shell() for s in tpu_vm.collect_steps(vm, "r1", "out")]
    assert collect == ["mkdir -p out/r1", "gcloud storage cp 'gs://b/logs/r1/*' out/r1/"]


def test_tpu_plan_errors():
    with pytest.raises(ValueError, match="unknown subcommand 'start'"):
        tpu_vm.plan("start", POD)
    with pytest.raises(ValueError, match="give the metacog command after --"):
        tpu_vm.plan("run", POD, [])
    assert [s.shell() for s in tpu_vm.plan("delete", POD)] == [
        "gcloud compute tpus tpu-vm delete mc-pod --zone=us-central2-b --project=proj --quiet"]


def test_tpu_vm_cli_dry_run_prints_commands(capsys):
    status = tpu_vm.main(["run", "--name=mc-pod", "--zone=us-central2-b", "--accelerator_type=v4-16",
                          "--run_name=exp1", "--dry_run", "--no_check_config", "--", *TRAIN])
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("# run metacog train on every worker\n"
                          "gcloud compute tpus tpu-vm ssh mc-pod --zone=us-central2-b --worker=all '--command=")
    assert "metacog train --config=configs/multitask.py:domains=gsm8k --config.train.lr=1e-5" in out


def test_tpu_vm_cli_checks_config_before_launch(tmp_path):
    with pytest.raises(SystemExit, match="config does not load"):
        tpu_vm.main(["run", "--name=v", "--zone=z", "--dry_run", "--",
                     "train", f"--config={tmp_path / 'missing.py'}"])


def test_pack_sources_takes_tracked_and_untracked_but_not_ignored(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "tracked.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "init"], check=True)
    (repo / "untracked.py").write_text("y = 2\n")
    (repo / "ignored.txt").write_text("secret\n")
    out = tmp_path / "src.tgz"
    tpu_vm.pack_sources(repo, str(out))
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == [".gitignore", "tracked.py", "untracked.py"]


# --- GPU hosts -----------------------------------------------------------------------


def test_gpu_multihost_commands():
    commands = gpu_multihost.host_commands(["alice@gpu0", "gpu1"], ["train", "--workdir=/shared/r"],
                                           run_name="r", port=2222, ssh_options=["BatchMode=yes"])
    assert len(commands) == 2
    for process_id, (command, host) in enumerate(zip(commands, ["alice@gpu0", "gpu1"])):
        assert command[:4] == ["ssh", "-o", "BatchMode=yes", host]
        assert command[4] == (
            'set -o pipefail && . "$HOME"/metacog_venv/bin/activate && cd "$HOME"/metacog_jax && '
            'mkdir -p "$HOME"/metacog_logs/r && METACOG_COORDINATOR=gpu0:2222 METACOG_NUM_PROCESSES=2 '
            f"METACOG_PROCESS_ID={process_id} metacog train --workdir=/shared/r 2>&1 | "
            f'tee "$HOME"/metacog_logs/r/process-{process_id}.log')
    with pytest.raises(ValueError, match="listed twice"):
        gpu_multihost.host_commands(["a", "a"], ["train"])


def test_gpu_multihost_dry_run(capsys):
    assert gpu_multihost.main(["--hosts=h0,h1,h2", "--coordinator_host=10.0.0.5", "--dry_run", "--",
                               "eval", "--workdir=w"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1] == "wait"
    assert all(line.endswith(" &") and "METACOG_COORDINATOR=10.0.0.5:12355" in line for line in lines[:3])
    assert [f"METACOG_PROCESS_ID={i}" in line for i, line in enumerate(lines[:3])] == [True] * 3


def test_gpu_multihost_launch_stops_others_on_failure():
    start = time.monotonic()
    status = gpu_multihost.launch([[sys.executable, "-c", "import sys; sys.exit(3)"],
                                   [sys.executable, "-c", "import time; time.sleep(60)"]])
    assert status == 3
    assert time.monotonic() - start < 20


# --- sweeps --------------------------------------------------------------------------


def test_four_condition_sweep():
    grid = sweep.parse_grid(["task=single,pairwise,multitask,base", "domains=gsm8k+mmlu_pro",
                             "model=smollm2_135m", "seed=0"])
    points = sweep.build_sweep("configs/experiment.py", grid, stages=["train"], workdir_root="runs/s1")
    lines = sweep.render_lines(points)
    assert lines == [
        f"metacog train --config=configs/experiment.py:task={task},domains=gsm8k+mmlu_pro,model=smollm2_135m,"
        f"seed=0 --workdir=runs/s1/task-{task}_domains-gsm8k+mmlu_pro_model-smollm2_135m_seed-0"
        for task in ("single", "pairwise", "multitask", "base")
    ]
    assert len({p.workdir for p in points}) == 4


def test_sweep_grid_product_overrides_and_stages():
    grid = sweep.parse_grid(["task=single,pairwise", "seed=0,1", "train.lr=1e-5"])
    points = sweep.build_sweep("configs/e.py:quick", grid, stages=["train", "eval"], workdir_root="gs://b/sw/",
                               fixed=[("model", "smollm2_135m")])
    assert [p.values for p in points][:2] == [
        (("task", "single"), ("seed", "0"), ("train.lr", "1e-5")),
        (("task", "single"), ("seed", "1"), ("train.lr", "1e-5"))]
    assert len(points) == 4 and len({p.workdir for p in points}) == 4
    train, evaluate = points[0].commands
    assert train == ("train", "--config=configs/e.py:quick,model=smollm2_135m,task=single,seed=0",
                     "--config.train.lr=1e-5", "--workdir=gs://b/sw/task-single_seed-0_train.lr-1e-5")
    assert evaluate[0] == "eval" and evaluate[1:] == train[1:]
    script = sweep.render_script(points)
    assert script.startswith("#!/usr/bin/env bash") and script.count("metacog train") == 4


def test_sweep_tpu_mode_and_errors(capsys):
    assert sweep.main(["--config=configs/e.py", "--grid", "task=single,base", "--mode=tpu",
                       "--tpu_arg=--name=mc", "--tpu_arg=--zone=z", "--workdir_root=gs://b/r"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "python launch/tpu_vm.py run --name=mc --zone=z --run_name=task-single-train -- train "
        "--config=configs/e.py:task=single --workdir=gs://b/r/task-single",
        "python launch/tpu_vm.py run --name=mc --zone=z --run_name=task-base-train -- train "
        "--config=configs/e.py:task=base --workdir=gs://b/r/task-base",
    ]
    with pytest.raises(ValueError, match="both map to workdir name"):
        sweep.build_sweep("c.py", sweep.parse_grid(["x=a/b,a-b"]))
    with pytest.raises(ValueError, match="unknown stages"):
        sweep.build_sweep("c.py", sweep.parse_grid(["x=1"]), stages=["fit"])
    with pytest.raises(ValueError, match="given twice"):
        sweep.parse_grid(["x=1", "x=2"])


# --- the remote scripts really run (locally, with a fake venv and metacog) -------------


def _fake_home(tmp_path: Path, exit_status: int = 0) -> Path:
    """A $HOME with metacog_venv/bin/activate putting a fake `metacog` on PATH, and the repo dir."""
    home = tmp_path / "home"
    bin_dir = home / "metacog_venv" / "bin"
    bin_dir.mkdir(parents=True)
    (home / "metacog_jax").mkdir()
    fake = bin_dir / "metacog"
    fake.write_text("#!/bin/sh\n"
                    'echo "args: $*"\n'
                    'echo "cwd: $(pwd)"\n'
                    'echo "env: $METACOG_DISTRIBUTED $METACOG_PROCESS_ID $METACOG_COORDINATOR $EXTRA"\n'
                    f"exit {exit_status}\n")
    fake.chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n')
    return home


def _bash(script: str, home: Path) -> subprocess.CompletedProcess:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_scripts_are_valid_bash():
    cloned = tpu_vm.TpuVm(name="x", zone="z", repo_url="https://g/r.git", log_bucket="gs://b")
    scripts = [tpu_vm.install_script(POD), tpu_vm.install_script(cloned),
               tpu_vm.run_script(cloned, TRAIN, "r", detach=False), tpu_vm.run_script(cloned, TRAIN, "r", detach=True)]
    for script in scripts:
        check = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert check.returncode == 0, (script, check.stderr)


def test_tpu_run_script_runs_and_logs_per_host(tmp_path):
    home = _fake_home(tmp_path)
    script = tpu_vm.run_script(POD, ["train", "--config=configs/a.py:x=1,y=2", "--workdir=/w d"], "exp 1",
                               env={"EXTRA": "a b"})
    result = _bash(script, home)
    assert result.returncode == 0, result.stderr
    logs = list((home / "metacog_logs" / "exp 1").glob("*.log"))
    assert len(logs) == 1 and logs[0].stem == subprocess.run(["hostname"], capture_output=True,
                                                             text=True).stdout.strip()
    assert logs[0].read_text().splitlines() == [
        "args: train --config=configs/a.py:x=1,y=2 --workdir=/w d",
        f"cwd: {home / 'metacog_jax'}",
        "env: auto   a b",  # no process id or coordinator: JAX auto-detects the pod
    ]


def test_tpu_run_script_propagates_failure(tmp_path):
    home = _fake_home(tmp_path, exit_status=7)
    result = _bash(tpu_vm.run_script(POD, ["train"], "r"), home)
    assert result.returncode == 7


def test_gpu_host_script_runs(tmp_path):
    home = _fake_home(tmp_path)
    command = gpu_multihost.host_commands(["h0", "h1"], ["eval", "--workdir=w"], run_name="r", port=9)[1]
    result = _bash(command[-1], home)
    assert result.returncode == 0, result.stderr
    assert (home / "metacog_logs" / "r" / "process-1.log").read_text().splitlines()[-1] == "env:  1 h0:9 "
