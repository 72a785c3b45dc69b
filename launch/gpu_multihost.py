#!/usr/bin/env python3
"""Run one metacog process per GPU host over ssh, joined by jax.distributed.

Each host gets ``METACOG_COORDINATOR=<host0>:<port>``,
``METACOG_NUM_PROCESSES=<hosts>`` and ``METACOG_PROCESS_ID=<i>``, which the
start-up of every ``metacog`` model stage (``metacog_jax.runtime.start_process``)
turns into ``jax.distributed.initialize``. All hosts are started together; if
one fails the others are stopped (they would otherwise wait in initialization).

The package must already be installed on every host (same path, same venv)::

    python launch/gpu_multihost.py --hosts=gpu0,gpu1 --run_name=exp1 -- \\
        train --config=configs/multitask.py --workdir=/shared/runs/exp1
    python launch/gpu_multihost.py ... --dry_run   # print the ssh commands

Remote paths are relative to the remote home directory.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import split_metacog_argv  # noqa: E402  (sibling module of this script)


def _home(relative: str) -> str:
    return '"$HOME"/' + shlex.quote(relative)


def host_script(process_id: int, num_processes: int, coordinator: str, metacog_argv: Sequence[str],
                run_name: str, remote_dir: str = "metacog_jax", venv: str = "metacog_venv",
                log_dir: str = "metacog_logs", env: Mapping[str, str] | None = None) -> str:
    """The bash one host runs: activate the venv, set the METACOG_* variables, run metacog, tee a log."""
    logs = f"{_home(log_dir)}/{shlex.quote(run_name)}"
    variables = {
        "METACOG_COORDINATOR": coordinator,
        "METACOG_NUM_PROCESSES": str(num_processes),
        "METACOG_PROCESS_ID": str(process_id),
        **(env or {}),
    }
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
    return " && ".join([
        "set -o pipefail",
        f". {_home(venv)}/bin/activate",
        f"cd {_home(remote_dir)}",
        f"mkdir -p {logs}",
        f"{env_words} metacog {shlex.join(metacog_argv)} 2>&1 | tee {logs}/process-{process_id}.log",
    ])


def host_commands(hosts: Sequence[str], metacog_argv: Sequence[str], run_name: str = "run",
                  port: int = 12355, coordinator_host: str | None = None,
                  ssh_options: Sequence[str] = (), **script_kwargs) -> list[list[str]]:
    """One ``ssh`` argv per host; process i runs on ``hosts[i]``, process 0 hosts the coordinator.

    Args:
      hosts: ssh destinations, in process order.
      metacog_argv: the metacog command, e.g. ``["train", "--config=...", "--workdir=..."]``.
      run_name: names the log directory.
      port: the coordinator port on host 0.
      coordinator_host: the address the others use to reach host 0 (default:
        ``hosts[0]`` without any ``user@``), e.g. an internal IP.
      ssh_options: extra ``-o`` options for ssh, e.g. ``["BatchMode=yes"]``.
      **script_kwargs: remote_dir, venv, log_dir, env for :func:`host_script`.

    Raises:
      ValueError: no hosts, a repeated host, or no metacog command.
    """
    if not hosts:
        raise ValueError("--hosts: give at least one host")
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"--hosts {list(hosts)}: a host is listed twice")
    if not metacog_argv:
        raise ValueError("give the metacog command after --, e.g. -- train --config=...")
    coordinator = f"{coordinator_host or hosts[0].rsplit('@', 1)[-1]}:{port}"
    options = [word for option in ssh_options for word in ("-o", option)]
    return [
        ["ssh", *options, host,
         host_script(i, len(hosts), coordinator, metacog_argv, run_name, **script_kwargs)]
        for i, host in enumerate(hosts)
    ]


def launch(commands: Sequence[Sequence[str]], timeout: float | None = None) -> int:
    """Start all commands at once; stop the rest when one fails or the timeout passes.

    Returns:
      0 when every process succeeded, else the first non-zero exit status (124 on timeout).
    """
    procs = [subprocess.Popen(list(cmd)) for cmd in commands]
    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed:
                status = failed[0].returncode
                print(f"a host failed with exit status {status}; stopping the others", file=sys.stderr)
                break
            if deadline is not None and time.monotonic() > deadline:
                status = 124
                print("timeout; stopping all hosts", file=sys.stderr)
                break
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode != 0), 0)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    argv, metacog_argv = split_metacog_argv(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", required=True, help="comma-separated ssh destinations, process order")
    parser.add_argument("--port", type=int, default=12355, help="coordinator port on the first host")
    parser.add_argument("--coordinator_host", default=None, help="address of the first host as seen by the others")
    parser.add_argument("--run_name", default="run")
    parser.add_argument("--remote_dir", default="metacog_jax")
    parser.add_argument("--venv", default="metacog_venv")
    parser.add_argument("--log_dir", default="metacog_logs")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every host")
    parser.add_argument("--ssh_option", action="append", default=[], help="ssh -o option, repeatable")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all hosts are stopped")
    parser.add_argument("--dry_run", action="store_true", help="print the ssh commands instead of running them")
    args = parser.parse_args(argv)
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    try:
        commands = host_commands(hosts, metacog_argv, run_name=args.run_name, port=args.port,
                                 coordinator_host=args.coordinator_host, ssh_options=args.ssh_option,
                                 remote_dir=args.remote_dir, venv=args.venv, log_dir=args.log_dir, env=env)
    except ValueError as error:
        raise SystemExit(f"gpu_multihost.py: {error}") from None
    if args.dry_run:
        # The & makes the printed lines start every host concurrently, as launch() does.
        for command in commands:
            print(shlex.join(command) + " &")
        print("wait")
        return 0
    return launch(commands, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
