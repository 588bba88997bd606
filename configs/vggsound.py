"""AuM on VGGSound (exps/vggsound/aum-*.sh): 20 epochs, BCE, accuracy.

  python -m aum_jax.main --config=configs/vggsound.py:base_audioset --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from aum_jax.configs import common, data

PREP_STEP = "python scripts/prep_vggsound.py --csv vggsound.csv --audio-dir <wavs> (data/README.md, VGGSound)"


def get_data_config():
    """VGGSound; every other key is data.defaults()'s."""
    c = data.defaults()
    c.name = "vggsound"
    c.train_datafile = "data/vggsound/datafiles/vgg_train.json"  # VGGSound train.
    c.validation_datafile = "data/vggsound/datafiles/vgg_test.json"  # VGGSound test.
    c.label_csv = "data/vggsound/class_labels_indices.csv"  # 309 classes.
    c.num_classes = 309  # VGGSound classes.
    c.freqm, c.timem, c.mixup = 48, 192, 0.0  # exps/vggsound/aum-*.sh (bal=full: none).
    c.mean, c.std = -5.0767093, 4.4533687  # VGGSound fbank stats.
    return c


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        get_data_config(), arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=20, loss="BCE", metric="accuracy", warmup=True, decay=(5, 2, 0.75),
    )
