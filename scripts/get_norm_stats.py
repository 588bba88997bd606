"""Computes a dataset's fbank mean and std for ``config.mean`` / ``config.std``.

As the original ``get_norm_stats.py``: one ordered pass with normalisation skipped,
in batches of 1000 clips; the result is the average over batches of each batch's
mean and the average of each batch's (unbiased) standard deviation. Augmentation is
off (the evaluation pipeline); padding rows of the last batch are left out.

  python scripts/get_norm_stats.py --dataset audioset_20k --split train
"""

from __future__ import annotations

from aum_jax import console

console.quiet_native_logs()  # before JAX and TensorFlow load.

import numpy as np
import tqdm
from absl import app, flags

from aum_jax import datasets, input_pipeline
from aum_jax.configs.data import DATASETS, get_data_config

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "data config name.", required=True)
_SPLIT = flags.DEFINE_string("split", "train", "split to measure.")
_DATAFILE = flags.DEFINE_string("datafile", None, "override the split's JSON datafile.")
_LABEL_CSV = flags.DEFINE_string("label_csv", None, "override config.label_csv.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1000, "clips per batch.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "override config.num_workers.")


def main(argv: list[str]) -> None:
    del argv
    config = get_data_config(_DATASET.value)
    config.skip_norm = True
    config.eval_batch_size = _BATCH_SIZE.value
    if _DATAFILE.value:
        config[datasets.split_key(config, _SPLIT.value)] = _DATAFILE.value
    if _LABEL_CSV.value:
        config.label_csv = _LABEL_CSV.value
    if _NUM_WORKERS.value is not None:
        config.num_workers = _NUM_WORKERS.value
    iterator = input_pipeline.make_eval_iterator(
        config, _SPLIT.value, process_index=0, process_count=1
    )
    means, stds = [], []
    for batch in tqdm.tqdm(iterator, desc=f"{config.name}/{_SPLIT.value}", unit="batch"):
        values = batch["fbank"][batch["mask"]]
        if values.size:
            means.append(float(values.mean()))
            stds.append(float(values.std(ddof=1)))
    if iterator.bad_inputs:
        print(f"{len(iterator.bad_inputs)} clips could not be loaded and were left out")
    print(f"mean {np.mean(means):.7f} std {np.mean(stds):.7f} over {len(means)} batches")


if __name__ == "__main__":
    app.run(main, flags_parser=console.parse_absl_flags)
