"""Process start-up shared by every stage: host allocator, compilation cache, multi-host join.

Every `metacog` model stage (sample, targets, train, eval, export, explain, demo) calls
:func:`start_process` once, before it loads a config or touches a device (``metacog_jax.cli``); the
notebook helpers do the same (``metacog_jax.notebook.load_demo_config``). It runs, in this order:

1. :func:`tune_host_allocator`: glibc ``mallopt`` settings, which only pay off when applied before
   the process's threads start allocating;
2. :func:`enable_compilation_cache`: jax's persistent compilation cache, a jax config value that
   must be set before the first compilation;
3. :func:`maybe_initialize_distributed`: ``jax.distributed.initialize`` when the environment describes
   several processes, which must come before anything touches a JAX backend (``jax.devices()``).

Library code that may run without the CLI (the trainer, test workers) calls
:func:`maybe_initialize_distributed` itself; it is idempotent, so it is a no-op after
:func:`start_process`. Meshes, sharding rules and batch shardings live in ``metacog_jax.sharding``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Multi-host start-up
# ---------------------------------------------------------------------------

_FALSE = {"0", "false", "no", "off"}
_TRUE = {"1", "true", "yes", "on", "auto"}


def _env_int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def distributed_plan(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Decide from the environment whether and how to call ``jax.distributed.initialize``.

    In order:

    1. ``METACOG_DISTRIBUTED=0`` -> never initialize.
    2. ``METACOG_NUM_PROCESSES=N`` (N > 1) with ``METACOG_COORDINATOR=host:port``
       and ``METACOG_PROCESS_ID=i`` -> explicit initialization (GPU hosts,
       local tests; ``launch/gpu_multihost.py`` sets these). N = 1 -> none.
    3. ``METACOG_DISTRIBUTED=1``/``auto`` -> ``initialize()`` with JAX's cluster
       auto-detection (Cloud TPU VM pods, Slurm, Open MPI; ``launch/tpu_vm.py``
       sets it on pods, whose shells carry no TPU env vars).
    4. Cloud TPU env vars: ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES``
       listing several hosts, ``MEGASCALE_COORDINATOR_ADDRESS`` (multislice) or
       ``CLOUD_TPU_TASK_ID`` -> auto-detection.
    5. ``SLURM_NTASKS`` or ``OMPI_COMM_WORLD_SIZE`` > 1 -> auto-detection.
    6. Otherwise: a single process, nothing to do.

    Returns:
      None for "do not initialize", else the keyword arguments for
      ``jax.distributed.initialize`` plus a ``"reason"`` entry.

    Raises:
      ValueError: METACOG_NUM_PROCESSES > 1 without the coordinator or process id.
    """
    env = os.environ if env is None else env
    switch = env.get("METACOG_DISTRIBUTED", "").strip().lower()
    if switch in _FALSE:
        return None
    if env.get("METACOG_NUM_PROCESSES"):
        count = _env_int(env, "METACOG_NUM_PROCESSES")
        if count <= 1:
            return None
        missing = [k for k in ("METACOG_COORDINATOR", "METACOG_PROCESS_ID") if not env.get(k)]
        if missing:
            raise ValueError(
                f"METACOG_NUM_PROCESSES={count} but {', '.join(missing)} not set; "
                "set METACOG_COORDINATOR=host0:port and METACOG_PROCESS_ID=<0..N-1>")
        plan: dict[str, Any] = {
            "coordinator_address": env["METACOG_COORDINATOR"],
            "num_processes": count,
            "process_id": _env_int(env, "METACOG_PROCESS_ID"),
            "reason": "METACOG_* environment variables",
        }
        if env.get("METACOG_INIT_TIMEOUT"):
            plan["initialization_timeout"] = _env_int(env, "METACOG_INIT_TIMEOUT")
        return plan
    if switch in _TRUE:
        return {"reason": f"METACOG_DISTRIBUTED={switch}"}
    for key in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        hosts = [h for h in env.get(key, "").split(",") if h.strip()]
        if len(hosts) > 1:
            return {"reason": f"{key} lists {len(hosts)} hosts"}
    for key in ("MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID"):
        if env.get(key):
            return {"reason": f"{key} is set"}
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if env.get(key, "").isdigit() and int(env[key]) > 1:
            return {"reason": f"{key}={env[key]}"}
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize`` when the environment says there are several processes.

    Must run before anything touches a JAX backend (``jax.devices()``, any
    computation). Idempotent: a second call, or a call after the caller
    initialized JAX itself, does nothing. Every host must run the same
    program; a host that never starts leaves the others waiting in here until
    the timeout. See :func:`distributed_plan` for the environment read.

    On CPU, cross-process collectives use gloo
    (``jax_cpu_collectives_implementation``) unless the environment variable
    ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` chose another.

    Returns:
      True when JAX runs as one of several processes (initialized now or before).
    """
    if jax.distributed.is_initialized():
        return True
    plan = distributed_plan(env)
    if plan is None:
        return False
    reason = plan.pop("reason")
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logger.info("initializing jax.distributed (%s): %s", reason, plan or "auto-detect")
    jax.distributed.initialize(**plan)
    return True


# ---------------------------------------------------------------------------
# Compilation cache
# ---------------------------------------------------------------------------

DEFAULT_COMPILATION_CACHE = "~/.cache/metacog_jax/xla"


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Keep compiled XLA programs on disk so that later processes reuse them (jax's persistent cache).

    Every `metacog` stage is its own process and the demo's stages compile the same programs (the train
    step of S, C and C+S; the sampler and scorer of each evaluation): with the cache only the first one
    pays for compilation. The directory is `path`, else the environment variable METACOG_COMPILATION_CACHE,
    else ~/.cache/metacog_jax/xla; METACOG_COMPILATION_CACHE=off (or an empty value) disables it. The cache
    is keyed by the program, jax/jaxlib version and devices, so a stale entry is never used.

    Returns the directory used, or None when disabled.
    """
    if path is None:
        path = os.environ.get("METACOG_COMPILATION_CACHE", DEFAULT_COMPILATION_CACHE)
    if not path or path.lower() == "off":
        return None
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"compilation cache directory {path!r} cannot be created ({e.strerror}); set "
                         "METACOG_COMPILATION_CACHE to a writable directory, or to 'off'") from e
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# ---------------------------------------------------------------------------
# Host allocator
# ---------------------------------------------------------------------------

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def tune_host_allocator() -> bool:
    """Let glibc malloc keep freed host memory for reuse instead of returning it to the kernel.

    XLA:CPU allocates a step's temporary buffers afresh on every execution. By default glibc serves large
    blocks with mmap and unmaps them on free, so every training step page-faults its whole working set in
    again (about 500k minor faults and 0.8 s of kernel time per SmolLM2-135M step on the 2-core CPU).
    With mmap off for malloc, a 2 GiB trim threshold and one arena, freed blocks are reused: the same LoRA
    step runs 3.6 -> 3.3 s. The cost is that a process's resident memory stays near its peak.

    Call it early, before threads start allocating (:func:`start_process` does, for every `metacog` model
    stage; the benchmarks call it alone, for both sides). METACOG_HOST_MALLOC=off leaves malloc alone.
    Returns True if the settings were applied (glibc only; elsewhere it does nothing).
    """
    if os.environ.get("METACOG_HOST_MALLOC", "on").lower() in ("off", "0", "false", ""):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, 1) & mallopt(_M_MMAP_MAX, 0) & mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


# ---------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessStart:
    """What :func:`start_process` did.

    Attributes:
      host_allocator_tuned: :func:`tune_host_allocator` applied its glibc settings.
      compilation_cache: the persistent compilation cache directory, or None when it is off.
      distributed: JAX runs as one of several processes (``jax.distributed`` is initialized).
    """

    host_allocator_tuned: bool
    compilation_cache: str | None
    distributed: bool


_started: ProcessStart | None = None
_start_lock = threading.Lock()


def start_process() -> ProcessStart:
    """Set the process up for a model stage, once: host allocator, compilation cache, multi-host join.

    Call it first thing, before loading a model or touching a device (see the module docstring for why
    the order matters). The environment is read on the first call only: later calls do nothing and
    return the first call's result, so every entry point may call it without coordinating with the others.
    A first call that raises leaves the process unstarted, so fixing the environment and calling again works.

    Returns:
      What was done (:class:`ProcessStart`).

    Raises:
      ValueError: METACOG_COMPILATION_CACHE names a directory that cannot be created, or the METACOG_*
        multi-process variables are incomplete or not integers.
    """
    global _started
    with _start_lock:
        if _started is None:
            allocator = tune_host_allocator()
            cache = enable_compilation_cache()
            distributed = maybe_initialize_distributed()
            _started = ProcessStart(host_allocator_tuned=allocator, compilation_cache=cache,
                                    distributed=distributed)
            logger.debug("process started: %s", _started)
        return _started
