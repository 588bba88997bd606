"""AuM on VGGSound (exps/vggsound/aum-*.sh): 20 epochs, BCE, accuracy.

  python -m aum_jax.main --config=configs/vggsound.py:base_audioset --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        "vggsound", arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=20, loss="BCE", metric="accuracy", warmup=True, decay=(5, 2, 0.75),
    )
