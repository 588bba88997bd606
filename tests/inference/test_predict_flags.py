"""predict's modes: each option goes with the modes of ``predict.MODES`` that take it, and is
refused in one line by any other; the defaults hold when an option is left out."""

from __future__ import annotations

import pytest

from aum_jax import predict

# A value each option accepts.
VALUES = {"top_k": "3", "mean": "0", "std": "1", "label_csv": "l.csv", "loss": "CE", "save_logits": "l.npy",
          "save_features": "f.npy", "json": "t.json", "plot": "t.png", "channel": "mean", "window_seconds": "1",
          "hop_seconds": "0.5", "whole": None, "whole_pos_embed": "tile", "embeddings": "e.npz", "pool": None,
          "layers": "all", "tokens": None, "stream": None, "chunk_seconds": "0.2", "threshold": "0.7"}
# Options that pick a mode, and the order mode_of gives precedence in: one that picks a mode ahead
# of another turns that one into its own mode rather than being refused there.
SELECTS = {"embeddings": "embeddings", "stream": "stream", "whole": "whole", "window_seconds": "windows",
           "hop_seconds": "windows"}
PRECEDENCE = ["features", "embeddings", "stream", "whole", "windows", "clips"]
MODE_ARGS = {"features": ["--features", "x.npy"], "clips": ["--audio", "a.wav"],
             "windows": ["--audio", "a.wav", "--window-seconds", "1"], "whole": ["--audio", "a.wav", "--whole"],
             "embeddings": ["--audio", "a.wav", "--embeddings", "e.npz"], "stream": ["--audio", "a.wav", "--stream"]}


def _argv(mode: str, *options: str) -> list[str]:
    argv = ["predict", "--model-dir", "m", *MODE_ARGS[mode]]
    for option in options:
        flag = f"--{option.replace('_', '-')}"
        if flag not in argv:
            argv += [flag] if VALUES[option] is None else [flag, VALUES[option]]
    return argv


def test_every_governed_option_has_a_value_here():
    assert set(VALUES) == set(predict.MODES_OPTIONS)


@pytest.mark.parametrize("mode", list(predict.MODES))
def test_each_mode_takes_its_options_and_refuses_the_others(mode, capsys):
    _, takes = predict.MODES[mode]
    for option in takes:
        given = ("mean", "std") if option in ("mean", "std") else (option,)  # --mean and --std go together.
        assert predict.mode_of(predict.parse_flags(_argv(mode, *given))) == mode
    for option in sorted(predict.MODES_OPTIONS - set(takes)):
        if option in SELECTS and PRECEDENCE.index(SELECTS[option]) < PRECEDENCE.index(mode):
            continue  # it picks its own mode (whose case refuses this mode's options).
        with pytest.raises(SystemExit) as exit_:
            predict.parse_flags(_argv(mode, option))
        assert exit_.value.code == 1
        assert f"does not go with {predict.MODES[mode][0]}" in capsys.readouterr().err


def test_defaults_hold_when_options_are_left_out():
    args = predict.parse_flags(_argv("clips"))
    assert (args.top_k, args.channel, args.whole_pos_embed) == (5, "first", "interpolate")
