"""AuM on VoxCeleb1 speaker identification (exps/voxceleb/aum-*.sh): 20 epochs, CE, accuracy.

  python -m aum_jax.main --config=configs/voxceleb.py --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from aum_jax.configs import common, data

PREP_STEP = "python scripts/prep_voxceleb.py --iden-split iden_split.txt --wav-dir <wav root> (data/README.md, VoxCeleb1)"


def get_data_config():
    """VoxCeleb1 speaker identification; every other key is data.defaults()'s."""
    c = data.defaults()
    c.name = "voxceleb"
    c.train_datafile = "data/voxceleb/datafiles/train_data.json"  # VoxCeleb1 identification train.
    c.validation_datafile = "data/voxceleb/datafiles/test_data.json"  # VoxCeleb1 identification test.
    c.label_csv = "data/voxceleb/class_labels_indices.csv"  # 1251 speakers.
    c.num_classes = 1251  # VoxCeleb1 speakers.
    c.freqm, c.timem, c.mixup = 48, 192, 0.0  # exps/voxceleb/aum-*.sh.
    c.mean, c.std = -3.7614744, 4.2011642  # VoxCeleb fbank stats.
    return c


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        get_data_config(), arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=20, loss="CE", metric="accuracy", warmup=True, decay=(5, 2, 0.75),
    )
