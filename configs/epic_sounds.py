"""AuM on EPIC-Sounds (exps/epic-sounds/aum-*.sh): 30 epochs, CE, accuracy.

The original ramps the lr linearly from 1% over the first two epochs (every recipe sets
--warmup True) and then holds it: its training loop resets the lr to --lr on every step
after the warm-up, which overrides the LambdaLR it also sets up (x1 until epoch 10, x0.05
until 20, then x0.01). ``schedule="constant"`` reproduces what runs.

  python -m aum_jax.main --config=configs/epic_sounds.py:base_audioset --workdir=DIR

Variants: base_scratch (default), small_imgnet, base_audioset; add ,runlocal for a
tiny CPU check.
"""

from aum_jax.configs import common, data

PREP_STEP = ("put or link the EPIC-Sounds annotation CSVs and EPIC-KITCHENS-100_audio.hdf5 in "
             "data/epic_sounds/ (data/README.md, EPIC-Sounds)")


def get_data_config():
    """EPIC-Sounds from the EPIC-KITCHENS-100 HDF5 audio and its annotation CSVs."""
    c = data.defaults()
    c.name = "epic_sounds"
    c.source = "epic_sounds"  # HDF5 audio + annotation CSV.
    c.epic_sounds.hdf5 = "data/epic_sounds/EPIC-KITCHENS-100_audio.hdf5"  # per-video audio.
    c.epic_sounds.train_annotations = "data/epic_sounds/EPIC_Sounds_train.csv"  # train list.
    c.epic_sounds.validation_annotations = "data/epic_sounds/EPIC_Sounds_validation.csv"  # val list.
    c.label_csv = "data/epic_sounds/class_labels_indices.csv"  # 44 classes (names).
    c.num_classes = 44  # EPIC-Sounds classes.
    c.sample_rate = 24000  # the HDF5 audio's rate (Hz): sample positions and features.
    c.feature = "epic_logmel"  # librosa log-mel at 24 kHz, 10 ms window, 5 ms hop.
    c.mask_style = "epic"  # two mean-filled masks per axis.
    c.freqm, c.timem = 48, 192  # F_MASK, T_MASK = timem * audio_length / 1024.
    c.skip_norm = True  # the original feeds EPIC log-mels unnormalised.
    return c


def get_config(arg: str | None = None):
    config = common.get_recipe_config(
        get_data_config(), arg, families=("base_scratch", "small_imgnet", "base_audioset"),
        lr=1e-5, num_epochs=30, loss="CE", metric="accuracy", warmup=False,  # its ramp is set below.
    )
    config.optimizer.schedule = "constant"  # what the original runs after its warm-up (see above).
    if "runlocal" not in config.variant:
        config.optimizer.warmup_epochs = 2.0  # epic_warmup_step = 2 * len(train_loader).
        config.optimizer.warmup_start = 0.01  # the ramp starts at 1% of the lr.
        config.optimizer.warmup_interval = 1  # and rises every step.
    return config
