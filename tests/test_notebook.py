"""The Colab quick-start notebook stays valid and runs top to bottom.

The run test executes ``colab/ipguard_quickstart.ipynb`` headless with nbclient, the way papermill
would: an ``injected-parameters`` cell after the cell tagged ``parameters`` shrinks the run, the
kernel gets ``IPGUARD_OFFLINE=1`` (so the CIFAR-10 branch falls back to the embedded digits
without touching the network) and ``JAX_PLATFORMS=cpu``. The kernel is a temporary kernelspec
pointing at this interpreter, so the notebook runs against the library under test.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK = Path(__file__).resolve().parents[1] / "colab" / "ipguard_quickstart.ipynb"
KERNEL_NAME = "ipguard-notebook-test"

# Small enough for about a minute on a 2-core CPU, large enough for trained models whose
# verdicts mean something (independent models reach ~95% on digits at these settings).
TINY_PARAMETERS = """\
DATASET = "cifar10"   # not prepared and offline: exercises the fallback to digits
TFDS_DATA_DIR = {tfds_dir!r}
EPOCHS = 6
PIRATE_EPOCHS = 1
NUM_FINGERPRINTS = 30
FP_STEPS = 300
NUM_INDEPENDENT = 2
PROGRESS = False
"""


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _strip_magics(source: str) -> str:
    """Drops IPython shell escapes and magics (``!cmd``, ``%cmd``), which are not Python."""
    return "\n".join(line for line in source.splitlines()
                     if not line.lstrip().startswith(("!", "%")))


def test_notebook_is_valid_nbformat_with_cleared_outputs(notebook):
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.kernelspec.name == "python3"
    for cell in _code_cells(notebook):
        assert cell.outputs == [], "commit the notebook with outputs cleared"
        assert cell.execution_count is None
    # The raw file is plain JSON too (nbformat accepts a few things json does not).
    json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def test_parameters_cell_comes_first_and_marks_the_repository(notebook):
    code = _code_cells(notebook)
    tagged = [cell for cell in code if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0] is code[0], "the parameters cell must be the first code cell"
    source = tagged[0].source
    for name in ("REPO_URL", "DATASET", "QUICK", "EPOCHS", "NUM_FINGERPRINTS", "K"):
        assert f"\n{name} = " in f"\n{source}", name
    namespace: dict = {}
    exec(source, namespace)  # plain assignments only, so papermill can override them
    assert namespace["REPO_URL"].startswith("https://")
    assert namespace["DATASET"] == "cifar10"


def test_every_code_cell_compiles(notebook):
    for n, cell in enumerate(_code_cells(notebook)):
        compile(_strip_magics(cell.source), f"<notebook code cell {n}>", "exec")


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec for this interpreter (whatever ``python3`` resolves to elsewhere)."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "ipguard_jax test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL_NAME


def _stdout(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.slow  # executes the notebook in a kernel
def test_notebook_runs_offline_on_cpu(notebook, kernel_name, tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from nbclient import NotebookClient

    nb = nbformat.from_dict(json.loads(json.dumps(notebook)))  # a private copy
    index = next(n for n, cell in enumerate(nb.cells)
                 if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell(
        TINY_PARAMETERS.format(tfds_dir=str(tmp_path / "tfds")),
        metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\nprint(json.dumps({'executable': sys.executable}))"))

    work = (tmp_path / "work").resolve()
    work.mkdir()
    env = {**os.environ, "IPGUARD_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": str(work)}})
    client.execute(env=env)  # raises CellExecutionError, with the traceback, if a cell fails

    assert json.loads(_stdout(nb.cells[-1]))["executable"] == sys.executable
    summary = json.loads(_stdout(nb.cells[-2]).strip().splitlines()[-1])
    assert summary["dataset"] == "digits"
    assert summary["backend"] == "cpu"
    assert any("CIFAR-10 is not available" in _stdout(cell) for cell in nb.cells)
    verdicts = summary["verdicts"]
    assert verdicts["owner itself"] == {"matching_rate": 1.0, "is_copy": True}
    assert verdicts["pirated copy"]["is_copy"]
    assert not verdicts["independent model"]["is_copy"]
    assert len(summary["independent_rates"]) == 2
    assert len(summary["pirated_rates"]) == 4

    plot = Path(summary["plot"])
    assert plot.is_relative_to(work)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = [out for cell in nb.cells for out in cell.get("outputs", [])
             if out.output_type == "display_data" and "image/png" in out.get("data", {})]
    assert len(shown) == 1

    import ipguard_jax as ipg

    saved = ipg.load(summary["fingerprints"])
    assert len(saved) == summary["num_fingerprints"] == 30
    assert saved.metadata["config"]["k"] == summary["k"]
    assert (work / "ipguard_outputs" / "report.json").is_file()
