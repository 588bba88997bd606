"""Writes the per-clip sampling weights for balanced sampling (``--bal bal``).

Each class gets ``1000 / (count + 0.01)`` where ``count`` is how many clips carry it;
a clip's weight is the sum over its labels (:func:`aum_jax.data.pipeline.sampling.label_weights`). The weights go to
``<datafile without .json>_weight.csv``, one per line, the file that
``config.weight_csv`` names.

  python scripts/gen_weight_file.py --datafile data/audioset/datafiles/unbalanced.json \
      --label-csv data/audioset/class_labels_indices.csv
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import numpy as np
from absl import app, flags

from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.core import storage
from aum_jax.data.pipeline import sampling
from aum_jax.data.sources.datafile import DatafileSource

_DATAFILE = flags.DEFINE_string("datafile", None, "JSON datafile.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")
_LABEL_CSV = flags.DEFINE_string(
    "label-csv", "data/audioset/class_labels_indices.csv", "index,mid,display_name CSV."
)


def main(argv: list[str]) -> None:
    del argv
    out = _DATAFILE.value.removesuffix(".json") + "_weight.csv"
    storage.check_output_file(out, "the weight file", overwrite=_OVERWRITE.value)
    source = DatafileSource(_DATAFILE.value, _LABEL_CSV.value)
    weights = sampling.label_weights([source[i].labels for i in range(len(source))], source.num_classes)
    with storage.staged_file(out) as staging, open(staging, "w") as f:  # a file object: savetxt keeps the name.
        np.savetxt(f, weights, delimiter=",")
    print(f"wrote {len(weights)} weights to {out}")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
