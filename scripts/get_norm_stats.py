"""Computes a dataset's fbank mean and std for ``config.mean`` / ``config.std``.

As the original ``get_norm_stats.py``, in batches of 1000 clips (:mod:`aum_jax.data.pipeline.norm_stats`).

  python scripts/get_norm_stats.py --dataset audioset_20k --split train
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

from absl import app, flags
from aum_jax.configs.data import DATASETS, get_data_config

from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.data.pipeline import norm_stats
from aum_jax.data.sources import labels, registry

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "data config name.", required=True)
_SPLIT = flags.DEFINE_string("split", "train", "split to measure.")
_DATAFILE = flags.DEFINE_string("datafile", None, "override the split's JSON datafile.")
_LABEL_CSV = flags.DEFINE_string("label-csv", None, "override config.label_csv (and the class count: its rows).")
_BATCH_SIZE = flags.DEFINE_integer("batch-size", 1000, "clips per batch.")
_NUM_WORKERS = flags.DEFINE_integer("num-workers", None, "override config.num_workers.")


def main(argv: list[str]) -> None:
    del argv
    config = get_data_config(_DATASET.value)
    if _DATAFILE.value:
        *sections, key = registry.kind_of(config).split_key(_SPLIT.value).split(".")  # e.g. tfds.train_split.
        node = config
        for section in sections:
            node = node[section]
        node[key] = _DATAFILE.value
    if _LABEL_CSV.value:
        config.label_csv = _LABEL_CSV.value
        config.num_classes = len(labels.load_label_csv(_LABEL_CSV.value)[1])
    if _NUM_WORKERS.value is not None:
        config.num_workers = _NUM_WORKERS.value
    stats = norm_stats.fbank_statistics(config, _SPLIT.value, _BATCH_SIZE.value)
    if stats.bad_inputs:
        print(f"{len(stats.bad_inputs)} clips could not be loaded and were left out")
    print(f"mean {stats.mean:.7f} std {stats.std:.7f} over {stats.num_batches} batches")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError)), flags_parser=cli_flags.parse_absl_flags)
