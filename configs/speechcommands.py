"""AuM on Speech Commands V2-35 (exps/speechcommands/aum-*.sh): 30 epochs, accuracy.

  python -m aum_jax.main --config=configs/speechcommands.py:small_imgnet --workdir=DIR

The best model on the validation split is evaluated on the test split at the end, as
the original does. Variants: base_scratch (default), small_imgnet, base_audioset; add
,runlocal for a tiny CPU check.
"""

from aum_jax.configs import common, data

PREP_STEP = ("python scripts/prep_speechcommands.py --root <speech_commands_v0.02> "
             "(data/README.md, Speech Commands V2)")


def get_data_config():
    """Speech Commands V2-35 from the prep_speechcommands.py datafiles."""
    c = data.defaults()
    c.name = "speechcommands"
    c.train_datafile = "data/speechcommands/datafiles/speechcommand_train_data.json"  # train split.
    c.validation_datafile = "data/speechcommands/datafiles/speechcommand_valid_data.json"  # validation.
    c.test_datafile = "data/speechcommands/datafiles/speechcommand_eval_data.json"  # test split.
    c.label_csv = "data/speechcommands/speechcommands_class_labels_indices.csv"  # 35 words.
    c.num_classes = 35  # Speech Commands V2, 35 words.
    c.audio_length = 128  # 1 s clips -> 98 frames, padded to 128.
    c.freqm, c.timem, c.mixup = 48, 48, 0.6  # exps/speechcommands/aum-*.sh.
    c.noise = True  # noise augmentation on.
    c.mean, c.std = -6.845978, 5.5654526  # Speech Commands fbank stats.
    c.batch_size, c.eval_batch_size = 128, 256  # batch_size=128, eval 2x.
    return c


def get_config(arg: str | None = None, data_config=None):
    """The recipe; ``data_config`` replaces the datafile data (configs/speechcommands_tfds.py)."""
    return common.get_recipe_config(
        data_config or get_data_config(), arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=2.5e-4, num_epochs=30, loss="BCE", metric="accuracy", warmup=False, decay=(5, 1, 0.85),
        test_split="test",
    )
