"""Checks an EPIC-Sounds annotation CSV against the HDF5 audio and writes the usable rows.

``EpicSoundsSource`` reads the official ``EPIC_Sounds_{train,validation}.csv``
(``annotation_id, participant_id, video_id, start_timestamp, stop_timestamp, ...,
class_id``) directly; the ``.pkl`` copies need pandas. This tool drops rows whose
video is absent from the HDF5 file or whose segment is empty or past the end of the
video's audio, reports them, and writes the kept rows to ``--out``.

  python scripts/prep_epic_sounds.py --annotations EPIC_Sounds_train.csv \
      --hdf5 EPIC-KITCHENS-100_audio.hdf5 --out data/epic_sounds/EPIC_Sounds_train.csv
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import csv

import h5py
from absl import app, flags

from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.core import storage
from aum_jax.data.sources.epic_sounds import timestamp_to_seconds

_ANNOTATIONS = flags.DEFINE_string("annotations", None, "annotation CSV.", required=True)
_HDF5 = flags.DEFINE_string("hdf5", None, "EPIC-KITCHENS-100 audio HDF5.", required=True)
_OUT = flags.DEFINE_string("out", None, "output annotation CSV.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")
_SAMPLE_RATE = flags.DEFINE_integer("sample-rate", 24000, "audio sampling rate (Hz).")


def main(argv: list[str]) -> None:
    del argv
    storage.check_output_file(_OUT.value, "--out", overwrite=_OVERWRITE.value)
    sr = _SAMPLE_RATE.value
    with open(_ANNOTATIONS.value, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    kept, dropped = [], []
    with h5py.File(_HDF5.value, "r") as h5:
        for row in rows:
            start = int(timestamp_to_seconds(row["start_timestamp"]) * sr)
            stop = int(timestamp_to_seconds(row["stop_timestamp"]) * sr)
            video = row["video_id"]
            if video not in h5:
                dropped.append(f"{row['annotation_id']}: video {video} not in the HDF5 file")
            elif not start < stop <= h5[video].shape[0]:
                dropped.append(f"{row['annotation_id']}: samples [{start}, {stop}) outside "
                               f"the {h5[video].shape[0]} samples of {video}")
            else:
                kept.append(row)
    with storage.staged_file(_OUT.value) as staging, open(staging, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    for line in dropped:
        print("dropped", line)
    print(f"kept {len(kept)} of {len(rows)} segments -> {_OUT.value}")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
