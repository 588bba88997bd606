"""VGGSound ``vggsound.csv`` -> ``vgg_train.json`` / ``vgg_test.json``.

``vggsound.csv`` rows are ``youtube_id,start_seconds,label,split``; the audio of a
row is ``<audio_dir>/<youtube_id>_<start_seconds:06d>.wav``, the naming of the
original datafiles. Labels (display names) map to the ``/m/vggsdNNN`` ids of
``data/vggsound/class_labels_indices.csv``. Rows whose audio is missing are left out
and counted.

  python scripts/prep_vggsound.py --csv vggsound.csv --audio-dir /data/vggsound/audio
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

_CSV = flags.DEFINE_string("csv", None, "vggsound.csv.", required=True)
_AUDIO_DIR = flags.DEFINE_string("audio-dir", None, "folder of the wav files.", required=True)
_OUT_DIR = flags.DEFINE_string("out-dir", "data/vggsound/datafiles", "output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")
_LABEL_CSV = flags.DEFINE_string(
    "label-csv", "data/vggsound/class_labels_indices.csv", "index,mid,display_name CSV."
)


def main(argv: list[str]) -> None:
    del argv
    mid_of, names = load_label_csv(_LABEL_CSV.value)
    name_to_mid = {names[index]: mid for mid, index in mid_of.items()}
    audio_dir = os.path.abspath(_AUDIO_DIR.value)
    splits: dict[str, list[tuple[str, list[str]]]] = {"train": [], "test": []}
    outs = {split: os.path.join(_OUT_DIR.value, f"vgg_{split}.json") for split in splits}
    for out in outs.values():
        storage.check_output_file(out, "--out-dir", overwrite=_OVERWRITE.value)
    missing = 0
    with open(_CSV.value, newline="", encoding="utf-8") as f:
        for youtube_id, start, label, split in csv.reader(f):
            wav = os.path.join(audio_dir, f"{youtube_id}_{int(start):06d}.wav")
            if not os.path.exists(wav):
                missing += 1
                continue
            splits[split].append((wav, [name_to_mid[label]]))
    for split, entries in splits.items():
        write_datafile(outs[split], entries)
        print(f"{split}: {len(entries)} clips -> {outs[split]}")
    print(f"{missing} rows without audio were left out")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
