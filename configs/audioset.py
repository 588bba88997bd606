"""AuM on full AudioSet (exps/audioset/aum-*.sh): balanced sampling, 5 epochs, mAP.

  python -m aum_jax.main --config=configs/audioset.py:small_imgnet --workdir=DIR

Variants: base_scratch (default), small_imgnet; add ,runlocal for a tiny CPU check.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        "audioset", arg, families=("base_scratch", "small_imgnet"),
        lr=1e-5, num_epochs=5, loss="BCE", metric="mAP", warmup=True, decay=(2, 1, 0.5),
    )
