"""AuM on full AudioSet (exps/audioset/aum-*.sh): balanced sampling, 5 epochs, mAP.

  python -m aum_jax.main --config=configs/audioset.py:small_imgnet --workdir=DIR

Variants: base_scratch (default), small_imgnet; add ,runlocal for a tiny CPU check.
"""

from aum_jax.configs import common, data

from aum_jax.data.features.preprocessing import AUDIOSET_MEAN, AUDIOSET_STD

PREP_STEP = ("python scripts/prep_audioset.py --segments-csv <*_segments.csv> --audio-dir <clips> "
             "--out data/audioset/datafiles/<name>.json (data/README.md, AudioSet)")  # how its datafiles are made.


def get_data_config():
    """Full AudioSet (2M clips) with balanced sampling; every other key is data.defaults()'s."""
    c = data.defaults()
    c.name = "audioset"
    c.train_datafile = "data/audioset/datafiles/unbalanced.json"  # full 2M set.
    c.validation_datafile = "data/audioset/datafiles/eval.json"  # AudioSet eval segments.
    c.label_csv = "data/audioset/class_labels_indices.csv"  # 527 AudioSet classes.
    c.num_classes = 527  # AudioSet ontology classes.
    c.balanced_sampling = True  # --bal bal.
    c.weight_csv = "data/audioset/datafiles/unbalanced_weight.csv"  # from gen_weight_file.
    c.freqm, c.timem, c.mixup = 48, 192, 0.5  # exps/audioset/aum-*.sh.
    c.mean, c.std = AUDIOSET_MEAN, AUDIOSET_STD  # AudioSet fbank stats.
    return c


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        get_data_config(), arg, families=("base_scratch", "small_imgnet"),
        lr=1e-5, num_epochs=5, loss="BCE", metric="mAP", warmup=True, decay=(2, 1, 0.5),
    )
