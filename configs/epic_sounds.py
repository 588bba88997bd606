"""AuM on EPIC-Sounds (exps/epic-sounds/aum-*.sh): 30 epochs, CE, accuracy.

The original ramps the lr linearly from 1% over the first two epochs (every recipe sets
--warmup True) and then holds it: its training loop resets the lr to --lr on every step
after the warm-up, which overrides the LambdaLR it also sets up (x1 until epoch 10, x0.05
until 20, then x0.01). ``schedule="constant"`` reproduces what runs.

  python -m aum_jax.main --config=configs/epic_sounds.py:base_audioset --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from configs import common


def get_config(arg: str | None = None):
    config = common.get_recipe_config(
        "epic_sounds", arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=30, loss="CE", metric="accuracy", warmup=False,  # its ramp is set below.
    )
    config.optimizer.schedule = "constant"  # what the original runs after its warm-up (see above).
    if "runlocal" not in config.variant:
        config.optimizer.warmup_epochs = 2.0  # epic_warmup_step = 2 * len(train_loader).
        config.optimizer.warmup_start = 0.01  # the ramp starts at 1% of the lr.
        config.optimizer.warmup_interval = 1  # and rises every step.
    return config
