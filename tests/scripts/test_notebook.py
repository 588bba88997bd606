"""scripts/colab_evaluation.ipynb: clean nbformat 4 JSON, and its code runs end to end.

The notebook is read with the stdlib ``json`` module and its code cells are executed in
order in one namespace, as a kernel would. IPython shell and magic lines (``!pip``,
``%pip``) become ``pass``; the cell tagged ``parameters`` is replaced, papermill-style, by
one that points at the tiny Fo-Bi fixture (10 classes) and the five fixture wavs, labelled
with a 10-class label CSV written for the test.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from aum_jax.data.sources.datafile import write_datafile
from tests.helpers import REPO_ROOT

NOTEBOOK = REPO_ROOT / "scripts" / "colab_evaluation.ipynb"
MAGIC = re.compile(r"^(\s*)[!%].*$", re.MULTILINE)
CLIP_LABELS = [[0], [1], [0, 2], [1], [2]]  # classes of sample0..4.wav: each with positives and negatives.


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _python(cell: dict) -> str:
    """The cell's code with IPython shell and magic lines replaced by ``pass``."""
    return MAGIC.sub(r"\1pass", _source(cell))


def _is_parameters(cell: dict) -> bool:
    return "parameters" in cell["metadata"].get("tags", [])


def _assigned_names(code: str) -> set[str]:
    return {target.id for node in ast.parse(code).body if isinstance(node, ast.Assign) for target in node.targets}


def run_notebook(parameters: dict[str, object]) -> dict[str, object]:
    """Executes the notebook's code cells with the parameters cell replaced by ``parameters``."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    for cell in _notebook()["cells"]:
        if cell["cell_type"] != "code":
            continue
        if _is_parameters(cell):
            assert set(parameters) == _assigned_names(_source(cell)), "the test must set every notebook parameter"
            code = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
        else:
            code = _python(cell)
        exec(compile(code, f"{NOTEBOOK.name}:{cell['id']}", "exec"), namespace)
    return namespace


def test_notebook_is_clean_nbformat4():
    notebook = _notebook()
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    cells = notebook["cells"]
    assert cells and all(cell["cell_type"] in ("markdown", "code") for cell in cells)
    assert len({cell["id"] for cell in cells}) == len(cells)
    for cell in cells:
        assert isinstance(cell["metadata"], dict) and _source(cell).strip()
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{cell['id']} has stored outputs"
            compile(_python(cell), cell["id"], "exec")  # valid Python once the magics are gone
    parameters = [cell for cell in cells if _is_parameters(cell)]
    assert len(parameters) == 1 and parameters[0]["cell_type"] == "code"
    assert {"CHECKPOINT", "DATASET", "DATAFILE", "LABEL_CSV", "BATCH_SIZE"} <= _assigned_names(_source(parameters[0]))
    install = next(cell for cell in cells if cell["cell_type"] == "code")
    assert "REPO_URL" in _source(install) and "pip install" in _source(install)
    assert 'find_spec("aum_jax") is None' in _source(install), "the install cell must skip itself"


@pytest.fixture
def fixture_eval(tmp_path: Path, fixtures_dir: Path) -> dict[str, object]:
    """A 10-class label CSV and a datafile of the five fixture wavs, in tmp_path."""
    label_csv = tmp_path / "labels.csv"
    label_csv.write_text("index,mid,display_name\n" + "".join(f'{k},/m/t{k},"class {k}"\n' for k in range(10)))
    wavs = sorted((fixtures_dir / "audio").glob("sample*.wav"))
    assert len(wavs) == len(CLIP_LABELS)
    datafile = tmp_path / "eval.json"
    write_datafile(datafile, [(str(wav), [f"/m/t{k}" for k in ks]) for wav, ks in zip(wavs, CLIP_LABELS)])
    return {
        "CHECKPOINT": str(fixtures_dir / "aum_torch" / "tiny_fobi" / "state_dict.pth"),
        "DATASET": "vggsound",
        "DATAFILE": str(datafile),
        "LABEL_CSV": str(label_csv),
        "BATCH_SIZE": 4,  # two batches, the last one padded
        "MY_AUDIO": [str(wavs[0])],
    }


@pytest.mark.parametrize("checkpoint", ["pth", "model_dir"])
def test_notebook_runs_on_fixtures(checkpoint, fixture_eval, tmp_path, capsys):
    pytest.importorskip("torch")
    if checkpoint == "model_dir":
        from aum_jax.checkpoints import convert
        from aum_jax.checkpoints.model_files import save_model

        model = convert.convert(convert.read_torch_checkpoint(fixture_eval["CHECKPOINT"]))
        fixture_eval["CHECKPOINT"] = str(save_model(model, tmp_path / "model"))

    namespace = run_notebook(fixture_eval)
    out = capsys.readouterr().out

    logits = namespace["logits"]
    assert logits.shape == (5, 10) and np.all(np.isfinite(logits))
    np.testing.assert_array_equal(namespace["labels"].sum(axis=1), [len(ks) for ks in CLIP_LABELS])
    results = namespace["results"]
    assert set(results) == {"mAP", "mAUC", "d_prime", "accuracy"}
    assert all(np.isfinite(value) for value in results.values()), results
    assert 0 <= results["mAP"] <= 1 and 0 <= results["mAUC"] <= 1 and results["accuracy"] in np.arange(6) / 5
    assert "variant     Fo-Bi" in out and "classes     10" in out and "parameters  1,095,562" in out
    assert len(namespace["predictions"]) == 5 and all(len(best) == 5 for best in namespace["predictions"])
    assert "sample4.wav   true: class 2" in out
    np.testing.assert_allclose(namespace["mine"], logits[:1], atol=1e-5)  # step 6 on sample0.wav
    assert "sample0.wav: class " in out
