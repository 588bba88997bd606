"""AuM on balanced AudioSet-20K (exps/audioset-balanced/aum-*.sh): 25 epochs, mAP.

  python -m aum_jax.main --config=configs/audioset_20k.py:base_scratch --workdir=DIR

Variants: base_scratch (default), small_imgnet; add ,runlocal for a tiny CPU check.
"""

from aum_jax.configs import audioset, common

PREP_STEP = audioset.PREP_STEP  # the same tool, on the balanced segments.


def get_data_config():
    """Full AudioSet's recipe on the 20k balanced subset, sampled uniformly."""
    c = audioset.get_data_config()
    c.name = "audioset_20k"
    c.train_datafile = "data/audioset/datafiles/balanced.json"  # 20k balanced subset.
    c.balanced_sampling = False  # --bal none.
    c.weight_csv = ""  # no sampling weights.
    return c


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        get_data_config(), arg, families=("base_scratch", "small_imgnet"),
        lr=5e-5, num_epochs=25, loss="BCE", metric="mAP", warmup=True, decay=(10, 5, 0.5),
    )
