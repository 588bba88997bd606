"""VoxCeleb1 identification split -> ``train_data.json`` / ``test_data.json``.

``iden_split.txt`` lines are ``<set> idNNNNN/<video>/<clip>.wav`` with set 1 (train),
2 (validation) or 3 (test); as in the original recipe, train and validation form the
training datafile. Speaker ``id1NNNN`` is label ``/m/voxclbNNNN`` of
``data/voxceleb/class_labels_indices.csv``.

  python scripts/prep_voxceleb.py --iden-split iden_split.txt --wav-dir /data/voxceleb1/wav
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

_SPLIT = flags.DEFINE_string("iden-split", None, "iden_split.txt.", required=True)
_WAV_DIR = flags.DEFINE_string("wav-dir", None, "VoxCeleb1 wav root.", required=True)
_OUT_DIR = flags.DEFINE_string("out-dir", "data/voxceleb/datafiles", "output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace output files that exist.")


def speaker_mid(path: str) -> str:
    """``id10003/x/00001.wav`` -> ``/m/voxclb0003``."""
    return f"/m/voxclb{int(path.split('/')[0][2:]) - 10000:04d}"


def main(argv: list[str]) -> None:
    del argv
    wav_dir = os.path.abspath(_WAV_DIR.value)
    splits: dict[str, list[tuple[str, list[str]]]] = {"train_data": [], "test_data": []}
    outs = {name: os.path.join(_OUT_DIR.value, f"{name}.json") for name in splits}
    for out in outs.values():
        storage.check_output_file(out, "--out-dir", overwrite=_OVERWRITE.value)
    with open(_SPLIT.value, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            which, path = line.split()
            name = "test_data" if which == "3" else "train_data"
            splits[name].append((os.path.join(wav_dir, path), [speaker_mid(path)]))
    for name, entries in splits.items():
        write_datafile(outs[name], entries)
        print(f"{name}: {len(entries)} clips -> {outs[name]}")


if __name__ == "__main__":
    app.run(command.guard(main, also=(OSError, ValueError, KeyError)), flags_parser=cli_flags.parse_absl_flags)
