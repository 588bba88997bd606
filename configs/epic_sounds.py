"""AuM on EPIC-Sounds (exps/epic-sounds/aum-*.sh): 30 epochs, CE, accuracy.

The original uses its own schedule here: lr x1 until epoch 10, x0.05 until 20, then
x0.01, after a linear warm-up from 1% of the lr over the first two epochs.

  python -m aum_jax.main --config=configs/epic_sounds.py:base_audioset --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from configs import common


def get_config(arg: str | None = None):
    config = common.get_recipe_config(
        "epic_sounds", arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=30, loss="CE", metric="accuracy", warmup=False,
    )
    config.optimizer.schedule = "epic"  # LambdaLR: 1, 0.05 from epoch 10, 0.01 from epoch 20.
    if "runlocal" not in config.variant:
        config.optimizer.warmup_epochs = 2.0  # epic_warmup_step = 2 * len(train_loader).
        config.optimizer.warmup_start = 0.01  # the ramp starts at 1% of the lr.
        config.optimizer.warmup_interval = 1  # and rises every step.
    return config
