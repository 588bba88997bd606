"""Your own folder of clips: the layouts, a split that stays put when clips are added, clear errors,
unreadable clips counted as bad clips, and one command that trains a folder of generated keyword
clips and leaves a model directory that predict, the HEAR API and export use as it is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile
from aum_jax.configs import folder as folder_config

from aum_jax import hear
from aum_jax.checkpoints import model_files, pretrained
from aum_jax.checkpoints.model_files import load_model, save_model
from aum_jax.data.demo import demo_data
from aum_jax.data.pipeline import input_pipeline, norm_stats
from aum_jax.data.sources import folder_layout, folder_setup
from aum_jax.data.sources.folder import FolderSource
from aum_jax.inference import serving, classify
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import prepare as data_prepare
from tests.helpers import NAMES, REPO_ROOT, save_tiny_fobi

RATE = 16_000
FRACTIONS = (0.8, 0.1, 0.1)
EXTENSIONS = ("wav", "flac")


def touch(root: Path, *relative: str) -> None:
    """Empty files: scanning lists clips, it does not read them."""
    for name in relative:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def splits(layout: folder_layout.FolderLayout) -> dict[str, str]:
    return {path: split for split, clips in layout.clips.items() for path, _ in clips}


def test_the_split_is_stable_when_files_are_added(tmp_path):
    touch(tmp_path, *(f"{c}/clip{i:03d}.wav" for c in ("cat", "dog") for i in range(60)))
    before = splits(folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS))
    touch(tmp_path, *(f"{c}/new{i:03d}.flac" for c in ("cat", "dog") for i in range(60)), "dog/deeper/x.WAV",
          "dog/notes.txt", "bird/a.wav", "bird/b.wav")
    after = folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)
    assert after.class_names == ("bird", "cat", "dog") and not after.split_folders
    moved = {path: (split, splits(after)[path]) for path, split in before.items() if splits(after)[path] != split}
    assert not moved
    assert len(splits(after)) == 120 + 120 + 1 + 2  # the .txt file is no clip; the subfolder's clip is.
    # The shares follow the fractions.
    shares = [folder_layout.split_of(f"c/{i}.wav", FRACTIONS) for i in range(20_000)]
    assert abs(shares.count("train") / 20_000 - 0.8) < 0.01 and abs(shares.count("test") / 20_000 - 0.1) < 0.01


def test_split_folders_are_used_as_laid_out(tmp_path):
    touch(tmp_path, *(f"train/{c}/{i}.wav" for c in ("a", "b") for i in range(20)), "validation/a/v.wav",
          "validation/b/v.wav")
    layout = folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)
    assert layout.split_folders and [len(layout.clips[s]) for s in folder_layout.SPLITS] == [40, 2, 0]
    labels = dict(layout.clips["validation"])
    assert labels[str(tmp_path / "validation/b/v.wav")] == 1
    # Without validation/, train/ gives it its share by the hash; test/ stays as laid out.
    shutil.rmtree(tmp_path / "validation")
    touch(tmp_path, "test/a/t.wav")
    layout = folder_layout.scan(tmp_path, (0.5, 0.5, 0.0), EXTENSIONS)
    assert len(layout.clips["train"]) + len(layout.clips["validation"]) == 40
    assert 0 < len(layout.clips["validation"]) < 40 and layout.clips["test"] == [(str(tmp_path / "test/a/t.wav"), 0)]


@pytest.mark.parametrize("split_level", ["", "train/"])
def test_an_unlabelled_folder_holds_training_clips_without_a_class(tmp_path, split_level):
    touch(tmp_path, *(f"{split_level}{c}/{i}.wav" for c in ("a", "b") for i in range(20)),
          *(f"{split_level}unlabelled/u{i}.wav" for i in range(7)), *(["validation/a/v.wav"] if split_level else []))
    layout = folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)
    assert layout.class_names == ("a", "b")
    train = FolderSource(layout, "train")
    assert train.num_unlabelled == 7 and train.num_classes == 2
    assert sorted(r.key for r in train._records if not r.labels) == [
        str(tmp_path / f"{split_level}unlabelled/u{i}.wav") for i in range(7)]  # all in train, whatever the hash.
    assert all(r.labels for split in ("validation", "test") for r in FolderSource(layout, split)._records)
    touch(tmp_path, "validation/unlabelled/x.wav", *([] if split_level else ["train/a/t.wav", "train/b/t.wav"]))
    if not split_level:
        shutil.rmtree(tmp_path / "a"), shutil.rmtree(tmp_path / "b"), shutil.rmtree(tmp_path / "unlabelled")
    with pytest.raises(folder_layout.FolderError, match="validation and test clips need a class"):
        folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)


def test_links_add_no_clip_and_move_none(tmp_path, caplog):
    """A loop, a dangling link, links to a sibling class folder, into another class's subfolder and to a
    clip of another class: the layout is the one without them; a folder outside reached twice counts once."""
    root = tmp_path / "clips"
    touch(root, *(f"{c}/clip{i:03d}.wav" for c in ("cat", "dog", "yes") for i in range(40)), "dog/sub/deep.wav")
    without = folder_layout.scan(root, FRACTIONS, EXTENSIONS)
    os.symlink("..", root / "yes" / "loop")
    os.symlink("missing.wav", root / "yes" / "gone.wav")
    os.symlink("../dog", root / "cat" / "sibling")
    os.symlink("../dog/sub", root / "cat" / "into_dog")  # cat is scanned first: deep.wav stays a dog clip.
    os.symlink("../dog/clip000.wav", root / "yes" / "alias.wav")
    with caplog.at_level("WARNING"):
        assert folder_layout.scan(root, FRACTIONS, EXTENSIONS) == without
    assert len(splits(without)) == 121
    assert caplog.text.count(f"{root / 'yes' / 'gone.wav'} is a link to missing.wav, which does not exist") == 1
    assert f"{root / 'yes' / 'loop'} is a link to {root}, which is scanned already" in caplog.text
    assert f"{root / 'cat' / 'sibling'} is a link to {root / 'dog'}, which is scanned already" in caplog.text
    assert f"{root / 'yes' / 'alias.wav'} is {root / 'dog' / 'clip000.wav'}" in caplog.text
    assert f"{root / 'cat' / 'into_dog' / 'deep.wav'} is {root / 'dog' / 'sub' / 'deep.wav'}" in caplog.text

    # A folder outside the root, linked from two classes: its clip is one, of the first class.
    touch(tmp_path, "elsewhere/e.wav")
    os.symlink(tmp_path / "elsewhere", root / "dog" / "ext")
    os.symlink(tmp_path / "elsewhere", root / "yes" / "ext")
    labels = {path: label for clips in folder_layout.scan(root, FRACTIONS, EXTENSIONS).clips.values()
              for path, label in clips}
    assert len(labels) == 122 and labels[str(root / "dog" / "ext" / "e.wav")] == 1
    # A class folder that is another one is refused.
    os.symlink("cat", root / "kitten")
    with pytest.raises(folder_layout.FolderError, match="kitten is the same folder as .*cat .a link.: give each"):
        folder_layout.scan(root, FRACTIONS, EXTENSIONS)


def test_a_link_between_split_folders_moves_no_clip(tmp_path):
    touch(tmp_path, *(f"{s}/{c}/{i}.wav" for s in ("train", "validation") for c in ("a", "b") for i in range(5)))
    without = folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)
    os.symlink("../../validation/a", tmp_path / "train" / "a" / "leak")  # validation clips stay out of train.
    os.symlink("../..", tmp_path / "validation" / "b" / "loop")
    assert folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS) == without


@pytest.mark.parametrize("files, message", [
    ([], "has no class folders: lay the clips out as"),
    (["cat/a.wav", "dog/readme.txt"], "dog has no audio clips (.flac, .wav): add clips or remove the folder"),
    (["cat/a.wav", "cat/b.wav"], "has one class folder (cat): a classifier needs at least two"),
    (["validation/cat/a.wav"], "has validation/ but no train/"),
    (["train/a/1.wav", "train/b/1.wav", "validation/a/1.wav", "test/c/1.wav"], "class folder(s) c that"),
], ids=["empty", "class without clips", "one class", "no train", "unknown test class"])
def test_a_folder_that_cannot_serve_is_named(tmp_path, files, message):
    touch(tmp_path, *files)
    with pytest.raises(folder_layout.FolderError) as error:
        folder_layout.scan(tmp_path, FRACTIONS, EXTENSIONS)
    assert message in str(error.value)


def test_missing_folder_and_bad_fractions(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_layout.scan(tmp_path / "nope", FRACTIONS, EXTENSIONS)
    with pytest.raises(folder_layout.FolderError, match="add up to 1"):
        folder_layout.scan(tmp_path, (0.8, 0.3, 0.1), EXTENSIONS)


def test_fine_tuning_takes_the_model_and_features_of_a_converted_model(tmp_path):
    source = load_model(save_tiny_fobi(tmp_path / "converted", mean=-4.27, std=4.57, loss="BCE", class_names=NAMES))
    touch(tmp_path / "clips", *(f"{c}/{i}.wav" for c in ("a", "b") for i in range(20)))
    config = folder_config.get_config()
    config.data.folder.root, config.init.checkpoint = str(tmp_path / "clips"), str(tmp_path / "converted")
    data_prepare.adopt_model_dir(config, config.init.checkpoint)
    folder_setup.configure(config, tmp_path / "work")
    model_config = AuMConfig.from_dict(config.model.to_dict())
    assert model_config == source.config.replace(num_classes=2, scan_impl=model_config.scan_impl,
                                                 remat=model_config.remat)  # a 4-block Fo-Bi on 128 x 128.
    model = pretrained.init_from_pretrained(config.init.checkpoint, model_config, config.init)
    np.testing.assert_array_equal(model.layers.mixer.in_proj.kernel[...], source.layers.mixer.in_proj.kernel[...])
    assert model.head.kernel.shape == (192, 2)  # a fresh head for the folder's two classes.
    # With as many classes, the head is kept for the same names, its rows in the target's order.
    same = pretrained.init_from_pretrained(config.init.checkpoint, source.config, config.init, class_names=NAMES[::-1])
    np.testing.assert_array_equal(same.head.kernel[...], source.head.kernel[...][:, ::-1])


def test_a_source_head_is_kept_only_for_the_same_classes():
    head = {"head.weight": np.arange(6.0).reshape(3, 2), "head.bias": np.arange(3.0)}
    state = dict(head)
    pretrained.match_head(state, ["a", "b", "c"], ["a", "b", "c"])
    assert state == head
    pretrained.match_head(state, ["a", "b", "c"], ["c", "a", "b"])
    np.testing.assert_array_equal(state["head.bias"], [2.0, 0.0, 1.0])
    np.testing.assert_array_equal(state["head.weight"], head["head.weight"][[2, 0, 1]])
    pretrained.match_head(state, ["a", "b", "c"], ["a", "b", "d"])
    assert "head.weight" not in state and "head.bias" not in state  # a fresh head is made.


def test_fine_tuning_a_model_whose_input_length_is_no_power_of_two(tmp_path):
    """The demo's 96-frame, stride-8 model: the source's length comes from its config, not a search."""
    config = AuMConfig(num_mel_bins=64, audio_length=96, strides=(8, 8), embed_dim=32, depth=1, num_classes=3,
                       bimamba_type="v2")
    source = init_model(config, seed=1)
    save_model(source, tmp_path / "m")
    model = pretrained.init_from_pretrained(tmp_path / "m", config, folder_config.get_config().init)
    np.testing.assert_array_equal(model.pos_embed[...], source.pos_embed[...])


def tones(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(0.4 * RATE)) / RATE
    for name, freq in (("low", 300.0), ("high", 2500.0)):
        for i in range(per_class):
            path = root / name / f"{i:02d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.normal(size=t.size)), RATE)


def test_unreadable_clips_are_counted_like_other_bad_clips(tmp_path):
    tones(tmp_path, 10)
    (tmp_path / "low" / "broken.wav").write_bytes(b"RIFF\x00\x00not a wav")
    layout = folder_layout.scan(tmp_path, (0.5, 0.5, 0.0), EXTENSIONS)
    split = next(s for s in ("train", "validation") if any("broken" in p for p, _ in layout.clips[s]))
    data = folder_config.get_config("runlocal").data
    data.num_classes, data.audio_length, data.eval_batch_size, data.max_bad_fraction = 2, 32, 4, 0.2
    source = FolderSource(layout, split)
    stats = norm_stats.fbank_statistics(data, split, 4, source=source, show_progress=False)
    assert list(stats.bad_inputs) == [str(tmp_path / "low" / "broken.wav")] and np.isfinite(stats.mean)
    batches = list(input_pipeline.make_eval_iterator(data, split, source=source, process_index=0, process_count=1))
    assert np.concatenate([b["mask"] for b in batches]).sum() == len(source) - 1
    data.max_bad_fraction = 0.0  # no bad clip allowed: the run stops naming it.
    with pytest.raises(Exception, match="broken.wav"):
        norm_stats.fbank_statistics(data, split, 4, source=source, show_progress=False)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


@pytest.fixture(scope="module")
def keyword_folder(tmp_path_factory) -> Path:
    """30 generated keyword clips laid out as REPO_ROOT/<word>/<clip>.wav."""
    out = tmp_path_factory.mktemp("keywords")
    dataset = demo_data.generate_demo_dataset(out / "cache", words=("yes", "no", "up"), clips_per_word=8,
                                              valid_clips_per_word=1, eval_clips_per_word=1, synth_clips_per_word=0,
                                              recipe=demo_data.Recipe(synthesizers=("espeak",), rooms=(2, 1, 1)),
                                              num_workers=2, show_progress=False)
    root = out / "clips"
    for wav in sorted((dataset.root / "audio").rglob("*.wav")):
        split, word = wav.parts[-3], wav.parts[-2]
        (root / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, root / word / f"{split}_{wav.name}")
    return root


def test_a_folder_of_keyword_clips_trains_and_predicts_end_to_end(keyword_folder, tmp_path):
    workdir = tmp_path / "work"
    command = ("-m", "aum_jax.main", "--config=configs/folder.py:runlocal", f"--config.data.folder.root={keyword_folder}",
               "--config.data.folder.fractions=(0.6,0.2,0.2)", f"--workdir={workdir}")
    result = run(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation" in result.stdout and "\ntest " in result.stdout  # the results table.
    assert "Confusion matrix of the best model on test" in result.stdout and "yes" in result.stdout
    record = json.loads((workdir / "folder_data.json").read_text())
    assert record["classes"] == ["no", "up", "yes"] and sum(record["clips"].values()) == 30
    prep = model_files.load_preprocessing(workdir / "model")
    assert prep.class_names == ("no", "up", "yes") and (prep.mean, prep.std) == (record["mean"], record["std"])
    assert prep.score == "softmax" and prep.target_length == 64

    # The model directory serves predict, the HEAR API and export as it is.
    model = load_model(workdir / "model")
    clip = str(next(keyword_folder.glob("yes/*.wav")))
    clips = classify.classify_clips(model, prep, [clip])
    assert {name for name, _ in clips.timelines[0].top(3)[0]} == {"no", "up", "yes"}
    hear_model = hear.load_model(str(workdir))
    audio = soundfile.read(clip, dtype="float32")[0][None]
    assert hear.get_scene_embeddings(audio, hear_model).shape == (1, 192)
    artifact, _ = serving.write_export(workdir, tmp_path / "m.jaxexport", platforms=("cpu",))
    exported = jax.export.deserialize(bytearray(artifact.read_bytes()))
    features = prep.features(audio, RATE)[None]
    np.testing.assert_allclose(np.asarray(exported.call(features)), clips.logits, atol=1e-4)

    # A later run reuses the record; a folder whose classes changed is refused.
    def config():
        c = folder_config.get_config("runlocal")
        c.data.folder.root, c.data.folder.fractions = str(keyword_folder), (0.6, 0.2, 0.2)
        return c

    loaded = config()
    again = data_prepare.prepare(loaded, workdir, training=True, check=lambda c: None)
    assert (again.data.mean, again.data.std, again.data.num_classes) == (record["mean"], record["std"], 3)
    assert (loaded.data.num_classes, loaded.data.label_csv) == (0, "")  # the loaded config is left as loaded.
    with pytest.raises(AttributeError):
        again.data.num_classes = 4  # the derived one is read-only.
    assert json.loads((workdir / "folder_data.json").read_text()) == record
    (keyword_folder / "stop").mkdir()
    shutil.copy(clip, keyword_folder / "stop" / "s.wav")
    try:
        with pytest.raises(folder_layout.FolderError, match="has the classes no, stop, up, yes, but .* was trained "
                           "on no, up, yes: use another --workdir"):
            folder_setup.configure(config(), workdir)
    finally:
        shutil.rmtree(keyword_folder / "stop")


def test_an_empty_folder_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "clips").mkdir()
    result = run("-m", "aum_jax.main", "--config=configs/folder.py:runlocal",
                 f"--config.data.folder.root={tmp_path / 'clips'}", f"--workdir={tmp_path / 'work'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'clips'} has no class folders: lay the clips out as {tmp_path / 'clips'}/<class name>/"
        "<clip>.wav (one folder per class)"]
    assert not (tmp_path / "work").exists()


def test_an_empty_clip_past_max_bad_fraction_is_named_on_the_error_line(tmp_path):
    tones(tmp_path / "clips" / "train", 4)
    tones(tmp_path / "clips" / "validation", 1)
    empty = tmp_path / "clips" / "train" / "low" / "empty.wav"
    empty.touch()
    result = run("-m", "aum_jax.main", "--config=configs/folder.py:runlocal",
                 f"--config.data.folder.root={tmp_path / 'clips'}", "--config.data.max_bad_fraction=0",
                 f"--workdir={tmp_path / 'work'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 1 of 9 clips could not be loaded (at most 0 allowed by config.data.max_bad_fraction): "
        f"cannot load audio file '{empty}': file is empty (0 bytes)")
