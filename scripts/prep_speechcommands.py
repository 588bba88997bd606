"""Speech Commands V2 (35 words) -> train / validation / test datafiles.

Expects an extracted ``speech_commands_v0.02`` folder (one sub-folder per word, plus
the official ``validation_list.txt`` and ``testing_list.txt``). Validation and test
are those lists; training is every other clip outside ``_background_noise_``.
Labels are the ``/m/spcmdNN`` ids of ``data/speechcommands/
speechcommands_class_labels_indices.csv``. Writes, under ``--out-dir``,
``speechcommand_{train,valid,eval}_data.json`` with absolute paths.

  python scripts/prep_speechcommands.py --root /data/speech_commands_v0.02
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import os

from absl import app, flags

from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.core import storage
from aum_jax.data.sources.datafile import write_datafile
from aum_jax.data.sources.labels import load_label_csv

_ROOT = flags.DEFINE_string("root", None, "extracted speech_commands_v0.02.", required=True)
_OUT_DIR = flags.DEFINE_string("out-dir", "data/speechcommands/datafiles", "output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")
_LABEL_CSV = flags.DEFINE_string(
    "label-csv",
    "data/speechcommands/speechcommands_class_labels_indices.csv",
    "index,mid,display_name CSV of the 35 words.",
)


def split_lists(root: str) -> dict[str, list[str]]:
    """``{"train"|"valid"|"eval": [word/file.wav, ...]}`` from the official lists."""

    def read(name: str) -> list[str]:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]

    valid, test = read("validation_list.txt"), read("testing_list.txt")
    held_out = set(valid) | set(test)
    train = sorted(
        f"{word}/{name}"
        for word in os.listdir(root)
        if word != "_background_noise_" and os.path.isdir(os.path.join(root, word))
        for name in os.listdir(os.path.join(root, word))
        if name.endswith(".wav") and f"{word}/{name}" not in held_out
    )
    return {"train": train, "valid": valid, "eval": test}


def main(argv: list[str]) -> None:
    del argv
    root = os.path.abspath(_ROOT.value)
    mid_of, names = load_label_csv(_LABEL_CSV.value)
    word_to_mid = {names[index]: mid for mid, index in mid_of.items()}
    splits = split_lists(root)
    outs = {split: os.path.join(_OUT_DIR.value, f"speechcommand_{split}_data.json") for split in splits}
    for out in outs.values():
        storage.check_output_file(out, "--out-dir", overwrite=_OVERWRITE.value)
    for split, files in splits.items():
        entries = [(os.path.join(root, f), [word_to_mid[f.split("/")[0]]]) for f in files]
        write_datafile(outs[split], entries)
        print(f"{split}: {len(entries)} clips -> {outs[split]}")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
