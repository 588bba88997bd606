"""Distillation: a real teacher (the original's tiny Fo-Bi fixture, converted) into a small student,
online inside the step or from stored logits; weight 0 is today's step; four devices compute what
one does; labels kept for a share of the clips; and every misfit is one ``error:`` line."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import soundfile
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.data import teacher_logits
from aum_jax.data.pipeline import input_pipeline
from aum_jax.data.pipeline.stages.base import ClipContext
from aum_jax.data.pipeline.stages.decode import Decode
from aum_jax.data.pipeline.stages.mixup import Mixup
from aum_jax.data.sources import registry
from aum_jax.data.teacher_logits import StoredLogits
from aum_jax.inference import classify
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import distill_setup, distillation, objectives, train, update
from tests.helpers import (
    NAMES,
    REPO_ROOT,
    assert_one_error_line,
    run,
    save_tiny_fobi,
    subprocess_env,
    toy_config,
    write_toy_dataset,
    xla_flags,
)

RATE = 16_000
TEACHER_STATS = (-5.0114145, 4.2837193)


def write_ten_classes(root: Path, per_class: int = 3) -> dict[str, str]:
    """Tones of ten pitches named as the fixture's classes (c0..c9), 0.4 s at 16 kHz."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "labels.csv").write_text("index,mid,display_name\n" + "".join(f"{i},/c/{i},{n}\n" for i, n in enumerate(NAMES)))
    entries = {"train": [], "eval": []}
    for i in range(10):
        for n in range(per_class):
            t = np.arange(int(0.4 * RATE)) / RATE
            wav = root / "train" / f"c{i}_{n}.wav"
            tone = 0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t) + 0.02 * rng.normal(size=t.size)
            soundfile.write(wav, tone.astype(np.float32), RATE)
            entries["train" if n else "eval"].append({"wav": str(wav), "labels": f"/c/{i}"})
    paths = {"label_csv": str(root / "labels.csv")}
    for split, rows in entries.items():
        paths[split] = str(root / f"{split}.json")
        Path(paths[split]).write_text(json.dumps({"data": rows}))
    return paths


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_tiny_fobi(tmp_path_factory.mktemp("teacher") / "m", mean=TEACHER_STATS[0], std=TEACHER_STATS[1],
                          loss="CE", class_names=NAMES)


@pytest.fixture(scope="module")
def ten(tmp_path_factory) -> dict[str, str]:
    return write_ten_classes(tmp_path_factory.mktemp("ten"))


def student_config(paths: dict[str, str], **train_overrides):
    """A 32-wide 1-block student on the teacher's features (128 x 128), with statistics of its own."""
    config = toy_config(paths, **train_overrides)
    config.data.num_classes, config.data.num_mel_bins, config.data.audio_length = 10, 128, 128
    config.data.mean, config.data.std = -4.0, 3.5  # not the teacher's: its input is mapped in the step.
    config.data.batch_size = 6
    return config


def _step(config, source, teacher_dir: Path | None, weight: float | None = None):
    """One distilled step from a fresh student on the first training batch; (loss, parameters after)."""
    setup = distill_setup.setup(config, source)
    if weight is not None:
        config.distill.weight = weight
    settings = distillation.step_settings(config, None)
    batch = next(input_pipeline.make_train_iterator(config.data, source=setup.source))
    model = init_model(AuMConfig.from_dict(config.model.to_dict()), 0)
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    teacher = None
    if teacher_dir:
        teacher = model_files.load_model(teacher_dir)
        teacher.eval()
        teacher = distillation.Teacher(teacher, setup.input_scale, setup.input_shift)
    metrics = update.train_step(model, optimizer, jax.tree.map(np.asarray, batch), "distill", settings, frozen=teacher)
    return float(metrics["loss"]), [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))], batch


def test_a_fixture_teacher_distils_into_a_student_that_records_it(teacher, ten, tmp_path):
    config = student_config(ten, num_steps=2, steps_per_epoch=2)
    config.train.objective, config.distill.teacher = "distill", str(teacher)
    config.data.label_fraction = 0.5
    report = train.train_and_evaluate(config, tmp_path / "work")
    recorded = json.loads((tmp_path / "work" / "model" / distill_setup.RECORD_FILE).read_text())
    assert recorded == report["distilled"]
    assert recorded["teacher"] == str(teacher) and (recorded["weight"], recorded["temperature"], recorded["loss"]) == (
        0.9, 1.0, "kl")
    assert recorded["teacher_checksums_sha256"] == hashlib.sha256((teacher / "checksums.json").read_bytes()).hexdigest()
    assert np.isfinite(report["final"]["loss"]) and report["step"] == 2


def test_stored_logits_round_trip_and_give_the_online_teachers_first_update(teacher, ten, tmp_path):
    overrides = [f"--config.data.train_datafile={ten['train']}", f"--config.data.validation_datafile={ten['eval']}",
                 f"--config.data.label_csv={ten['label_csv']}", "--config.data.num_classes=10"]
    done = run("scripts/teacher_logits.py", f"--model-dir={teacher}", "--config=configs/speechcommands.py:runlocal",
               *overrides, f"--out={tmp_path / 'logits'}")
    assert done.returncode == 0, done.stderr[-3000:]
    stored = StoredLogits(tmp_path / "logits")
    assert stored.num_classes == 10 and stored.class_names == NAMES and len(stored) == 20

    config = student_config(ten)  # un-augmented batches: no mixup, masks or noise.
    source = registry.make_source(config.data, "train")
    config.train.objective, config.distill.teacher = "distill", str(teacher)
    online_loss, online, batch = _step(config, source, teacher)
    config.distill.teacher, config.distill.logits = "", str(tmp_path / "logits")
    stored_loss, from_file, stored_batch = _step(config, source, None)
    np.testing.assert_array_equal(batch["fbank"], stored_batch["fbank"])  # the same clips in the same order.
    np.testing.assert_allclose(stored_loss, online_loss, rtol=1e-5)
    for a, b in zip(from_file, online, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_teacher_of_other_features_reads_its_own_input_from_each_waveform(teacher, ten, tmp_path):
    """A 64-bin, 0.64 s student under the 128-bin, 1.28 s teacher: its targets in the step equal
    its logits on its own features of each clip (stored here with the teacher's preprocessing)."""
    config = student_config(ten, num_steps=2, steps_per_epoch=2)
    config.data.num_mel_bins, config.data.audio_length = 64, 64
    source = registry.make_source(config.data, "train")
    prep = model_files.load_preprocessing(teacher)
    rows = (prep.features(*source.load_audio(i, None)) for i in range(len(source)))
    logits = classify.run_model(model_files.load_model(teacher), rows).logits
    teacher_logits.write(tmp_path / "logits", [source[i].key for i in range(len(source))], logits, {"teacher": "t"})
    config.train.objective, config.distill.teacher = "distill", str(teacher)
    setup = distill_setup.setup(config, source)
    assert setup.teacher_preprocessing.num_mel_bins == 128
    online = next(input_pipeline.make_train_iterator(config.data, source=setup.source,
                                                     teacher_preprocessing=setup.teacher_preprocessing))
    assert online["fbank"].shape[1:] == (64, 64) and online["teacher_fbank"].shape[1:] == (128, 128)
    config.distill.teacher, config.distill.logits = "", str(tmp_path / "logits")
    stored = next(input_pipeline.make_train_iterator(config.data, source=distill_setup.setup(config, source).source))
    loaded = model_files.load_model(teacher)
    loaded.eval()
    targets = distillation.online_targets(distillation.Teacher(loaded, setup.input_scale, setup.input_shift), online,
                                          distillation.step_settings(config, None))["teacher"]
    np.testing.assert_allclose(targets, stored["teacher"], rtol=1e-4, atol=1e-6)
    config.distill.teacher, config.distill.logits = str(teacher), ""
    report = train.train_and_evaluate(config.copy_and_resolve_references(), tmp_path / "work")  # the run trains.
    assert report["step"] == config.train.num_steps and np.isfinite(report["final"]["loss"])


def test_weight_zero_is_the_supervised_step_exactly(teacher, ten):
    config = student_config(ten)
    config.train.objective, config.distill.teacher = "distill", str(teacher)
    source = registry.make_source(config.data, "train")
    _, distilled, batch = _step(config, source, teacher, weight=0.0)
    model = init_model(AuMConfig.from_dict(config.model.to_dict()), 0)
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    update.train_step(model, optimizer, jax.tree.map(np.asarray, batch), "supervised", objectives.Supervised("CE"))
    for a, b in zip(distilled, [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))], strict=True):
        np.testing.assert_array_equal(a, b)


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, ml_collections, numpy as np, optax
    from flax import nnx
    from aum_jax.core import sharding
    from aum_jax.checkpoints import model_files
    from aum_jax.models import AuMConfig, init_model
    from aum_jax.training import distillation, update

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    batch = {"fbank": rng.normal(size=(8, 128, 128)).astype(np.float32),
             "label": np.eye(10, dtype=np.float32)[rng.integers(10, size=8)],
             "labelled": np.array([1, 0] * 4, np.float32)}
    settings = distillation.Distill(0.7, 2.0, "kl", "CE")
    out = []
    for devices in (1, 4):
        mesh = sharding.make_mesh(ml_collections.ConfigDict({"data_axis": "data", "num_devices": devices}))
        model = init_model(AuMConfig(num_mel_bins=128, audio_length=128, embed_dim=32, depth=1, num_classes=10), 0)
        optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
        teacher = model_files.load_model(sys.argv[1])
        teacher.eval()
        for module in (model, optimizer, teacher):
            nnx.update(module, sharding.replicate(nnx.state(module), mesh))
        metrics = update.train_step(model, optimizer, sharding.global_batch(batch, mesh), "distill", settings,
                                    frozen=distillation.Teacher(teacher, 1.1, -0.1))
        out.append({"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                    "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]})
    print("RESULT " + json.dumps(out))
""")


def test_four_devices_compute_what_one_does(teacher):
    env = subprocess_env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"))
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(teacher)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, four = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[7:])
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-6)
    np.testing.assert_allclose(four["grad_norm"], one["grad_norm"], rtol=1e-5)
    for a, b in zip(four["params"], one["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_labels_are_kept_for_a_seeded_class_stratified_share_which_alone_trains_without_a_teacher(ten):
    config = student_config(ten)
    full = registry.make_source(config.data, "train")
    config.data.label_fraction = 0.5
    share = registry.make_source(config.data, "train")
    assert len(share) == len(full) == 20 and share.num_unlabelled == 10
    kept = [share[i].labels for i in range(20)]
    assert sorted(ls[0] for ls in kept if ls) == list(range(10))  # one of each class's two clips.
    assert [share[i].key for i in range(20)] == [full[i].key for i in range(20)]
    assert kept == [registry.make_source(config.data, "train")[i].labels for i in range(20)]  # seeded.
    config.data.seed += 1
    assert kept != [registry.make_source(config.data, "train")[i].labels for i in range(20)]
    assert share.num_unlabelled_by_fraction == 10
    assert distill_setup.setup(config, share) is None  # no teacher: the labelled share alone trains.
    labelled = distill_setup.labelled_clips(config, share)
    assert len(labelled) == 10 and labelled.num_unlabelled == 0
    assert [labelled[i].key for i in range(10)] == [share[i].key for i in range(20) if share[i].labels]
    np.testing.assert_array_equal(labelled.load_audio(3, None)[0],
                                  share.load_audio([i for i in range(20) if share[i].labels][3], None)[0])


def test_mixup_mixes_stored_targets_with_its_own_lambda(teacher, ten, tmp_path):
    config = student_config(ten)
    config.train.objective, config.distill.logits = "distill", str(tmp_path / "logits")
    keys = [registry.make_source(config.data, "train")[i].key for i in range(20)]
    logits = np.random.default_rng(1).normal(size=(20, 10)).astype(np.float32)
    teacher_logits.write(tmp_path / "logits", keys, logits, {"teacher": "made here"})
    source = distill_setup.setup(config, registry.make_source(config.data, "train")).source
    config.data.mixup = 1.0
    context = ClipContext(distill_setup.labels.training_preprocessing(config), 10, True, source)
    rng = np.random.default_rng(3)
    for index in range(4):
        mixed = Mixup(config.data, context).apply(Decode(config.data, context)(index), rng)
        other = keys.index(mixed["key"].split(" mixed with ")[1])
        lam = float(mixed["label"][source[index].labels[0]]) if source[index].labels != source[other].labels else None
        if lam is None:
            continue
        softmax = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(mixed["teacher"], lam * softmax(logits[index]) + (1 - lam) * softmax(logits[other]),
                                   rtol=1e-5)


def _cli(workdir: Path, ten: dict[str, str], *extra: str):
    return run("-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal", f"--workdir={workdir}",
               f"--config.data.train_datafile={ten['train']}", f"--config.data.validation_datafile={ten['eval']}",
               f"--config.data.test_datafile={ten['eval']}", f"--config.data.label_csv={ten['label_csv']}",
               "--config.data.num_classes=10", "--config.data.num_mel_bins=128", "--config.data.audio_length=128",
               "--config.model.depth=1", "--config.model.embed_dim=32", *extra)


def test_a_teacher_that_does_not_fit_is_one_error_line_before_anything_is_written(teacher, ten, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(teacher, damaged)
    (damaged / "config.json").write_text("{")
    other_names = tmp_path / "other"
    shutil.copytree(teacher, other_names)
    prep = json.loads((other_names / "preprocessing.json").read_text())
    (other_names / "preprocessing.json").write_text(json.dumps({**prep, "class_names": ["zz"] + list(NAMES[1:])}))
    two = write_toy_dataset(tmp_path / "two", clips_per_class=2)
    entries = json.loads(Path(ten["train"]).read_text())
    for entry in entries["data"][:3]:
        entry["labels"] = ""  # clips the source itself holds without labels.
    blanked = tmp_path / "blanked.json"
    blanked.write_text(json.dumps(entries))
    unreadable = tmp_path / "unreadable"  # files that open, parameters that no longer match their checksums.
    shutil.copytree(teacher, unreadable)
    checksums = json.loads((unreadable / "checksums.json").read_text())
    first = next(iter(checksums["sha256"]))
    checksums["sha256"][first] = "0" * 64
    (unreadable / "checksums.json").write_text(json.dumps(checksums))
    keys = [registry.make_source(student_config(ten).data, "train")[i].key for i in range(20)]
    logits = np.random.default_rng(0).normal(size=(20, 10))
    logits[4, 2], logits[11, 7] = np.nan, np.inf  # rows that give no target.
    teacher_logits.write(tmp_path / "nan_logits", keys, logits, {"teacher": "t"})
    distil = "--config.train.objective=distill"
    cases = [
        ([f"--config.data.train_datafile={two['train']}", f"--config.data.validation_datafile={two['eval']}",
          f"--config.data.test_datafile={two['eval']}", f"--config.data.label_csv={two['label_csv']}",
          "--config.data.num_classes=2", distil, f"--config.distill.teacher={teacher}"],
         [f"config.distill.teacher={teacher}", "has 10 classes"]),
        ([distil, f"--config.distill.teacher={damaged}"], [f"config.distill.teacher={damaged}", "config.json"]),
        ([distil, f"--config.distill.teacher={other_names}"], ["names its classes otherwise", "'zz' vs 'c0'"]),
        ([distil, f"--config.distill.logits={tmp_path / 'nothing'}"], ["config.distill.logits=", "holds no logits.npy"]),
        ([f"--config.data.train_datafile={blanked}"], ["3 of the 20 training clips have no labels",
                                                       "config.train.objective=distill"]),
        ([distil, f"--config.distill.teacher={unreadable}"], [f"config.distill.teacher={unreadable}",
                                                              f"parameter(s) {first}", "no longer match"]),
        ([distil, f"--config.distill.logits={tmp_path / 'nan_logits'}"],
         ["2 of its 20 rows hold NaN or Inf", f"rows 4 ({keys[4]}), 11 ({keys[11]})"]),
        # Distillation is an objective: its settings without it, or it without a teacher, are config errors.
        ([f"--config.distill.teacher={teacher}"],
         ["config.distill.teacher is set, but config.train.objective='supervised'", "config.train.objective=distill"]),
        ([distil], ["config.train.objective=distill needs config.distill.teacher", "or config.distill.logits"]),
        ([distil, f"--config.distill.teacher={teacher}", "--config.distill.temperature=0"],
         ["config.distill.temperature=0", "must be positive"]),
    ]
    for i, (extra, fragments) in enumerate(cases):
        workdir = tmp_path / f"work{i}"
        assert_one_error_line(_cli(workdir, ten, *extra), *fragments)
        assert not workdir.exists(), extra
