"""Your own folder of clips, one class per folder: trained, evaluated and saved in one command.

  python -m aum_jax.main --config=configs/folder.py --config.data.folder.root=PATH --workdir=DIR
  python -m aum_jax.main --config=configs/folder.py --config.data.folder.root=PATH --workdir=DIR \\
      --config.init.checkpoint=models/aum_base_as --config.optimizer.lr=1e-4     # fine-tune a converted model

PATH holds PATH/<class name>/<clip>.wav (flac, ogg, mp3, ...), or the same under PATH/train/,
PATH/validation/ and PATH/test/; without those, each clip's split comes from a hash of its
path (config.data.folder.fractions), so adding clips never moves the others
(:mod:`aum_jax.data.sources.folder_layout`). Single-label only: a clip has the class of its folder. On
first use the class names (WORKDIR/labels.csv), the input length (audio_length 0: the longest
training clip) and the fbank statistics of the training split are fixed in
WORKDIR/folder_data.json; the best model lands in WORKDIR/model with them, ready for
aum_jax.predict, aum_jax.hear and aum_jax.export.

From scratch it trains the demo's recipe (configs/demo.py: a depth-2 tiny Bi-Bi AuM on 64 mel
bins with overlapping patches, measured on a CPU). With ``init.checkpoint`` an aum-jax model
directory (a converted or trained model), the model and its input features are that model's
(``init.adopt_model_dir``), with a fresh head for the folder's classes.

Variant ``runlocal``: a handful of steps on short inputs, seconds; ``causal`` or ``bidirectional``: the
model built for one pass (``configs/common.py``).
"""

import ml_collections
from aum_jax.configs import common, demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _, local = common.parse_variant(arg, "folder", ("folder",))
    config = demo.get_config()  # the demo's model, optimizer and schedule (BENCHMARKS.md, "Your own folder").
    del config["demo"]  # no generated clips.
    config.variant = common.variant_name("folder", arg, local)  # for the logs.
    if common.one_pass_type(arg):
        common.apply_one_pass(config, common.one_pass_type(arg))

    data = config.data
    data.name = "folder"
    data.source = "folder"  # aum_jax.data.sources.folder.
    data.train_datafile = data.validation_datafile = data.test_datafile = ""  # the folder holds the splits.
    del data["test_synth_datafile"]  # the demo's held-out synthesizer.
    data.label_csv = ""  # written from the class folders: WORKDIR/labels.csv.
    data.num_classes = 0  # the number of class folders (set on first use).
    data.audio_length = 0  # 0: the longest training clip's frames (up to data.folder.max_audio_length), in whole patches.
    data.freq_warp = 0.0  # the demo's vocal-tract warp suits voices; set it for speech.
    data.mean, data.std = 0.0, 1.0  # replaced by the training split's statistics on first use.
    data.cache_features = False  # a folder can be large: compute fbanks every epoch (True: once, in memory).

    config.init.adopt_model_dir = True  # an aum-jax model directory in init.checkpoint sets the model and its input features.
    config.eval.test_split = "test"  # evaluated once with the best model (dropped when the folder has no test clips).
    config.eval.extra_test_splits = ()  # a folder has train, validation and test only.

    if local:
        common.apply_runlocal(config)
        config.data.eval_batch_size = 8
        config.train.steps_per_epoch = 2
    return config
