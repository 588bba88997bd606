"""AuM on Speech Commands V2-35 (exps/speechcommands/aum-*.sh): 30 epochs, accuracy.

  python -m aum_jax.main --config=configs/speechcommands.py:small_imgnet --workdir=DIR

The best model on the validation split is evaluated on the test split at the end, as
the original does. Variants: base_scratch (default), small_imgnet, base_audioset; add
,runlocal for a tiny CPU check.
"""

from configs import common


def get_config(arg: str | None = None):
    return common.get_recipe_config(
        "speechcommands", arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=2.5e-4, num_epochs=30, loss="BCE", metric="accuracy", warmup=False, decay=(5, 1, 0.85),
        test_split="test",
    )
