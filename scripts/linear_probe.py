"""A linear probe of a frozen model: logistic regression on its embeddings of a labelled source.

  python scripts/linear_probe.py --model-dir W/model --config=configs/demo.py
  python scripts/linear_probe.py --model-dir W/model --config=configs/demo.py --random --seed=0   # the same model, random weights

The model (an aum-jax model directory or training workdir; with ``--random`` a fresh
initialisation of its config, ``--seed``) embeds every clip of the config's ``--train-split`` and
``--test-split`` (datafile, folder, TFDS, the demo), each read whole with the model's own features.
Two embeddings are probed, each standardised: the model's pooled vector (the cls token for AuM)
and the mean of its final patch tokens. scikit-learn's ``LogisticRegression`` is fitted on the
training split's clips (all their labels; single-label sources: a clip's first label) and scored
on the test split; accuracy and clip counts are printed and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from aum_jax.checkpoints import model_files  # noqa: E402
from aum_jax.cli import command  # noqa: E402
from aum_jax.cli import flags as cli_flags  # noqa: E402
from aum_jax.core import storage  # noqa: E402
from aum_jax.data.features import audio  # noqa: E402
from aum_jax.data.sources import registry  # noqa: E402
from aum_jax.evaluation import evaluate  # noqa: E402
from aum_jax.inference import classify  # noqa: E402
from aum_jax.models import init_model  # noqa: E402
from aum_jax.training import prepare  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "The labelled source's config.",
                                          lock_config=True)
_MODEL_DIR = flags.DEFINE_string("model-dir", None, "The model: an aum-jax model directory or training workdir.")
_RANDOM = flags.DEFINE_boolean("random", False, "Probe a fresh initialisation of the model's config instead.")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation seed with --random.")
_TRAIN_SPLIT = flags.DEFINE_string("train-split", "train", "The split the probe is fitted on.")
_TEST_SPLIT = flags.DEFINE_string("test-split", "test", "The split the probe is scored on.")
_BATCH = flags.DEFINE_integer("batch-size", 32, "Clips per forward pass.")
_MAX_ITER = flags.DEFINE_integer("max-iter", 2000, "LogisticRegression's max_iter.")
_OUT = flags.DEFINE_string("out", None, "JSON file of the results (an existing file only with --overwrite).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def _embed(model, prep, source) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every clip of ``source`` -> ``{"pooled": (N, D), "mean_tokens": (N, D)}`` and its first labels (N,)."""
    records = [source[i] for i in range(len(source))]  # each read once.
    labels = np.array([record.labels[0] if record.labels else -1 for record in records])
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} clips of the source have no labels; the probe needs them")

    def rows():
        for i in range(len(source)):
            waveform, rate = source.load_audio(i, None)  # AudioLoadError names the clip.
            yield prep.features(waveform, rate)

    def keep(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "tokens": batch["tokens"].mean(axis=(1, 2))}  # (B, D): not the whole grid.

    out = classify.run_model(model, rows(), _BATCH.value, embed=evaluate.Embed(tokens=True), reduce=keep)
    return {"pooled": out.features, "mean_tokens": out.tokens}, labels


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _MODEL_DIR.value:
        raise app.UsageError("--model-dir is required")
    storage.check_output_file(_OUT.value, "--out", overwrite=_OVERWRITE.value)  # before any work.
    directory = model_files.model_directory(_MODEL_DIR.value)
    model = model_files.load_model(directory)
    if _RANDOM.value:
        model = init_model(model.config, _SEED.value)
    prep = model_files.load_input_features(directory)
    config = _CONFIG.value.copy_and_resolve_references()
    config.eval.split, config.eval.test_split, config.eval.extra_test_splits = _TEST_SPLIT.value, "", ()
    with tempfile.TemporaryDirectory() as scratch:  # a folder source's first-use files; not kept.
        config = prepare.prepare(config, Path(scratch), training=True, check=lambda c: None)
        sources = {split: registry.make_source(config.data, split) for split in (_TRAIN_SPLIT.value, _TEST_SPLIT.value)}
    (train_x, train_y), (test_x, test_y) = (_embed(model, prep, sources[s]) for s in sources)
    results = {"model": str(directory), "random": _RANDOM.value, "seed": _SEED.value if _RANDOM.value else None,
               "train_clips": len(train_y), "test_clips": len(test_y)}
    for name in train_x:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=_MAX_ITER.value))
        probe.fit(train_x[name], train_y)
        results[f"{name}_accuracy"] = float(probe.score(test_x[name], test_y))
    print(json.dumps(results, indent=1))
    if _OUT.value:
        storage.write_text(_OUT.value, json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(command.guard(main, also=(audio.AudioLoadError,)), flags_parser=cli_flags.parse_absl_flags)
