"""AuM on TFDS ``speech_commands`` (ArrayRecord), with the Speech Commands recipe.

  python -m aum_jax.main --config=configs/speechcommands_tfds.py --workdir=DIR

TFDS's v0.02 build has 12 labels (10 words, silence, unknown), not the original's 35.
Variants as configs/speechcommands.py.
"""

from aum_jax.configs import speechcommands

PREP_STEP = ""  # TFDS prepares and finds its own files.


def get_data_config():
    """The Speech Commands recipe, read with tfds.data_source("speech_commands")."""
    c = speechcommands.get_data_config()
    c.name = "speechcommands_tfds"
    c.source = "tfds"  # tfds.data_source("speech_commands") (ArrayRecord).
    c.tfds.name = "speech_commands"  # TFDS v0.02 build: 10 words + silence + unknown.
    c.tfds.test_split = "test"  # TFDS test split.
    c.train_datafile = c.validation_datafile = c.test_datafile = c.label_csv = ""  # TFDS has them.
    c.num_classes = 12  # the TFDS label set, not the original's 35.
    return c


def get_config(arg: str | None = None):
    return speechcommands.get_config(arg, get_data_config())
