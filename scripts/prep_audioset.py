"""AudioSet segment CSV -> datafile.

The official ``*_segments.csv`` lists ``YTID, start_seconds, end_seconds,
positive_labels`` (lines starting with ``#`` are comments). The audio of a row is
``<audio_dir>/<YTID>_<start ms>_<end ms>.<ext>``, the naming of the original
datafiles. Rows whose audio is missing are left out and counted. For the full
(unbalanced) set, run ``scripts/gen_weight_file.py`` on the result.

  python scripts/prep_audioset.py --segments-csv eval_segments.csv \
      --audio-dir /data/audioset/eval_segments/audio --out data/audioset/datafiles/eval.json
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import csv
import os

from absl import app, flags

from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.core import storage
from aum_jax.data.sources.datafile import write_datafile
from aum_jax.data.sources.labels import load_label_csv

_SEGMENTS = flags.DEFINE_string("segments-csv", None, "AudioSet segments CSV.", required=True)
_AUDIO_DIR = flags.DEFINE_string("audio-dir", None, "folder of the clips.", required=True)
_EXT = flags.DEFINE_string("ext", "flac", "audio file extension.")
_OUT = flags.DEFINE_string("out", None, "output JSON datafile.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")
_LABEL_CSV = flags.DEFINE_string(
    "label-csv", "data/audioset/class_labels_indices.csv", "index,mid,display_name CSV."
)


def main(argv: list[str]) -> None:
    del argv
    storage.check_output_file(_OUT.value, "--out", overwrite=_OVERWRITE.value)
    mid_of, _ = load_label_csv(_LABEL_CSV.value)
    audio_dir = os.path.abspath(_AUDIO_DIR.value)
    entries, missing = [], 0
    with open(_SEGMENTS.value, newline="", encoding="utf-8") as f:
        rows = csv.reader((line for line in f if not line.startswith("#")),
                          skipinitialspace=True)
        for ytid, start, end, labels in rows:
            name = f"{ytid}_{round(float(start) * 1000)}_{round(float(end) * 1000)}.{_EXT.value}"
            wav = os.path.join(audio_dir, name)
            if not os.path.exists(wav):
                missing += 1
                continue
            mids = labels.split(",")
            unknown = [m for m in mids if m not in mid_of]
            if unknown:
                raise ValueError(f"{_SEGMENTS.value}: {ytid} has unknown labels {unknown}")
            entries.append((wav, mids))
    write_datafile(_OUT.value, entries)
    print(f"{len(entries)} clips -> {_OUT.value}; {missing} rows without audio left out")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
