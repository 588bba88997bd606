"""Runs a teacher over a split of a run's source once and stores its logits for distillation.

  python scripts/teacher_logits.py --model-dir TEACHER --config=configs/demo.py --out logits/demo_teacher
  python -m aum_jax.main --config=configs/demo.py --workdir=W --config.train.objective=distill \
      --config.distill.logits=logits/demo_teacher

The source is the config's (datafile, folder, TFDS, the demo; ``--config.<key>=<value>``
overrides any setting); each clip is read whole and uncropped, and becomes the teacher's input
with the teacher's own features (its ``preprocessing.json``: rate, bins, length, statistics),
so a teacher of other features than the student's works too. The output folder
(:mod:`aum_jax.data.teacher_logits`) holds ``logits.npy`` (one row per clip), ``clips.txt``
(the clips, as the training run names them) and ``teacher.json``; it is written whole or not
at all, into a new or empty folder, or over an earlier stored-logits folder with ``--overwrite``
(a folder holding any other file is refused before anything runs). A clip that cannot be read is one ``error:`` line: the run needs every clip's row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aum_jax.checkpoints import model_checks, model_files  # noqa: E402
from aum_jax.cli import command  # noqa: E402
from aum_jax.cli import flags as cli_flags  # noqa: E402
from aum_jax.core import storage  # noqa: E402
from aum_jax.data import teacher_logits  # noqa: E402
from aum_jax.data.features import audio  # noqa: E402
from aum_jax.data.sources import registry  # noqa: E402
from aum_jax.inference import classify  # noqa: E402
from aum_jax.training import prepare  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "The run's config: its data source.",
                                          lock_config=True)
_MODEL_DIR = flags.DEFINE_string("model-dir", None, "The teacher: an aum-jax model directory or training workdir.")
_OUT = flags.DEFINE_string("out", None, "Folder to write: new or empty (an earlier stored-logits folder with "
                           "--overwrite; a folder holding other files is refused).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it holds earlier stored logits.")
_SPLIT = flags.DEFINE_string("split", "train", "The split of the source to run over.")
_BATCH = flags.DEFINE_integer("batch-size", 32, "Clips per forward pass.")
_PRECISION = flags.DEFINE_string("matmul-precision", "highest", "float32 matmul precision of the teacher.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _MODEL_DIR.value or not _OUT.value:
        raise app.UsageError("--model-dir and --out are required")
    storage.check_output_dir(_OUT.value, "--out", teacher_logits.FILES, overwrite=_OVERWRITE.value)  # before any work.
    directory = model_files.model_directory(_MODEL_DIR.value)
    teacher = model_files.load_model(directory)
    prep = model_files.load_input_features(directory)
    config = _CONFIG.value.copy_and_resolve_references()
    training = _SPLIT.value == "train"
    config.eval.split, config.eval.test_split = ("" if training else _SPLIT.value), ""  # only this split's files.
    config.eval.extra_test_splits = ()
    with tempfile.TemporaryDirectory() as scratch:  # a folder source's first-use files; not kept.
        config = prepare.prepare(config, Path(scratch), training=training, check=lambda c: None)
        source = registry.make_source(config.data, _SPLIT.value)
    keys = [source[i].key for i in range(len(source))]

    def rows():
        for i in range(len(source)):
            waveform, rate = source.load_audio(i, None)  # AudioLoadError names the clip.
            yield prep.features(waveform, rate)

    outputs = classify.run_model(teacher, rows(), _BATCH.value, _PRECISION.value)
    info = {"teacher": str(directory), "class_names": list(prep.class_names),
            "teacher_checksums_sha256": model_checks.checksums_digest(directory),
            "source": f"{config.data.name} {_SPLIT.value}", "matmul_precision": _PRECISION.value}
    teacher_logits.write(_OUT.value, keys, outputs.logits, info)
    print(f"{len(keys)} clips' logits ({outputs.logits.shape[1]} classes) of {directory} -> {_OUT.value}")


if __name__ == "__main__":
    app.run(command.guard(main, also=(audio.AudioLoadError,)), flags_parser=cli_flags.parse_absl_flags)
