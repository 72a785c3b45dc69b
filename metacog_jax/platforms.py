"""Keep jax off a TPU runtime that has no TPU to drive.

The optional `tpu` extra installs libtpu so that `metacog plan` can compile for a TPU slice on any machine
(`metacog_jax.plan`). Once libtpu is installed, every jax process that leaves ``JAX_PLATFORMS`` unset
tries to start the TPU runtime: on a machine without TPU chips that prints warnings, costs a second or two,
and takes libtpu's process lock (``/tmp/libtpu_lockfile``), which then makes a concurrent ``metacog plan``
fail. :func:`keep_off_absent_tpu` (run when the package is imported) sets ``JAX_PLATFORMS=cpu`` in exactly
that case: libtpu installed, no TPU chip on the PCI bus, no NVIDIA GPU, ``JAX_PLATFORMS`` unset. A value
the user set, even an empty one, is always respected; on a TPU VM or a GPU machine nothing changes.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from pathlib import Path

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips show up on the PCI bus under Google's vendor id
_NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


def tpu_chips_present() -> bool:
    """True when a Google (TPU) device is on this host's PCI bus (the check jax itself makes)."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() == _GOOGLE_PCI_VENDOR:
                return True
        except OSError:
            continue
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def keep_off_absent_tpu(env: dict | None = None) -> bool:
    """Set JAX_PLATFORMS=cpu when libtpu is installed on a host without TPU chips or NVIDIA GPUs and the
    variable is unset. Returns True when it set it. Also applied to an already-imported jax whose backends
    have not started yet."""
    env = os.environ if env is None else env
    if "JAX_PLATFORMS" in env or not libtpu_installed() or tpu_chips_present():
        return False
    if any(os.path.exists(d) for d in _NVIDIA_DEVICES):
        return False  # jax picks the GPU; its TPU attempt fails quietly there
    env["JAX_PLATFORMS"] = "cpu"
    jax = sys.modules.get("jax")
    if jax is not None and env is os.environ and jax.config.jax_platforms is None:
        jax.config.update("jax_platforms", "cpu")
    return True
