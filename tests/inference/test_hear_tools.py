"""HEAR's own tools run ``aum_jax.hear`` as they run every HEAR submission: ``hear-validator``
passes for a converted checkpoint and for a trained demo model, and heareval's embedding
runner writes the scene and event embeddings of a HEAR-format task, equal to the Python API's."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from aum_jax import hear
from tests.helpers import NAMES, save_tiny_fobi, subprocess_env, toy_config, write_toy_dataset

RATE = 16_000
BIN = Path(sys.executable).parent  # where pip put the tools' console scripts.


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The original's tiny Fo-Bi checkpoint, converted (1.28 s input, 192 wide)."""
    return save_tiny_fobi(tmp_path_factory.mktemp("converted") / "m", mean=-5.0114145, std=4.2837193, loss="CE",
                          class_names=NAMES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run's ``model/`` after two steps on the toy tones (0.32 s input, 32 wide)."""
    from aum_jax.training import train

    root = tmp_path_factory.mktemp("trained")
    config = toy_config(write_toy_dataset(root / "data", clips_per_class=4), num_steps=2, steps_per_epoch=2)
    train.train_and_evaluate(config, root / "work")
    return root / "work" / "model"


def _tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=subprocess_env(), cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("which", ["converted", "trained"])
def test_hear_validator_passes(which, request, tmp_path):
    model_dir = request.getfixturevalue(which)
    done = _tool(str(BIN / "hear-validator"), "aum_jax.hear", "--model", str(model_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Received tensorflow Module" in done.stdout and done.stdout.rstrip().endswith("Looks good!")


def _tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.normal(size=t.size)).astype(np.float32)


def _write_task(tasks: Path, name: str, embedding_type: str, files: dict[str, tuple[np.ndarray, list]]) -> Path:
    """A task as HEAR lays them out: metadata, vocabulary, a JSON of labels per fold, 16 kHz WAVs."""
    task = tasks / name
    folds = {"fold00": dict(list(files.items())[::2]), "fold01": dict(list(files.items())[1::2])}
    labels = sorted({label if isinstance(label, str) else label["label"] for _, ls in files.values() for label in ls})
    task.mkdir(parents=True)
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": name, "version": "v1", "embedding_type": embedding_type,
        "prediction_type": "multiclass" if embedding_type == "scene" else "multilabel", "split_mode": "new_split_kfold",
        "sample_duration": 2.0, "evaluation": ["top1_acc"] if embedding_type == "scene" else ["event_onset_200ms_fms"],
        "nfolds": 2, "splits": list(folds)}))
    (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{l}\n" for i, l in enumerate(labels)))
    for fold, entries in folds.items():
        (task / f"{fold}.json").write_text(json.dumps({f: ls for f, (_, ls) in entries.items()}))
        (task / str(RATE) / fold).mkdir(parents=True)
        for f, (audio, _) in entries.items():
            soundfile.write(task / str(RATE) / fold / f, audio, RATE, subtype="FLOAT")
    return task


def test_heareval_runner_writes_scene_and_event_embeddings(trained, tmp_path):
    tasks = tmp_path / "tasks"
    scene_files = {f"{name}{i}.wav": (_tone(2.0, freq, i), [name]) for i in range(3)
                   for name, freq in (("low", 300.0), ("high", 2500.0))}
    events = {f"e{i}.wav": (_tone(2.0, 1000.0 + 100 * i, 10 + i), [{"label": "beep", "start": 400.0, "end": 900.0}])
              for i in range(4)}
    _write_task(tasks, "toy-scene", "scene", scene_files)
    _write_task(tasks, "toy-events", "event", events)
    done = _tool(sys.executable, "-m", "heareval.embeddings.runner", "aum_jax.hear", "--model", str(trained),
                 "--tasks-dir", str(tasks), "--embeddings-dir", str(tmp_path / "embeddings"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    model = hear.load_model(trained)
    out = tmp_path / "embeddings" / "aum_jax.hear"
    for task, files in (("toy-scene", scene_files), ("toy-events", events)):
        assert (out / task / ".done.embeddings").exists()
        for fold in ("fold00", "fold01"):
            names = json.loads((tasks / task / f"{fold}.json").read_text())
            count, dim = json.loads((out / task / f"{fold}.embedding-dimensions.json").read_text())
            assert dim == model.scene_embedding_size
            audio = np.stack([files[f][0] for f in names])
            if task == "toy-scene":
                expected = hear.get_scene_embeddings(audio, model)
                saved = np.stack([np.load(out / task / fold / f"{f}.embedding.npy") for f in names])
                assert count == len(names)
                assert sorted(pickle.loads((out / task / f"{fold}.target-labels.pkl").read_bytes())) == sorted(
                    files[f][1] for f in names)
            else:
                expected, stamps = hear.get_timestamp_embeddings(audio, model)
                saved = np.stack([np.load(out / task / fold / f"{f}.embedding.npy") for f in names])
                for f, row in zip(names, stamps, strict=True):
                    np.testing.assert_allclose(json.loads((out / task / fold / f"{f}.timestamps.json").read_text()), row)
                    beeps = json.loads((out / task / fold / f"{f}.target-labels.json").read_text())
                    assert [bool(b) for b in beeps] == [400.0 <= t <= 900.0001 for t in row]  # labels on our timeline.
                assert count == stamps.size
            np.testing.assert_allclose(saved, expected, atol=1e-6)
