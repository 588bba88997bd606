"""Self-supervised pretraining of AuM on unlabelled audio: masked spectrogram patch modelling (SSAST).

  python -m aum_jax.main --config=configs/pretrain.py --workdir=W            # the demo's clips, labels ignored
  python -m aum_jax.main --config=configs/demo.py --workdir=F \\
      --config.init.checkpoint=W/model --config.data.label_fraction=0.1       # fine-tune on 10 % of the labels

Each step masks ``pretrain.mask_ratio`` of every clip's patches in squares (``pretrain.cluster``),
replaces them by a learned mask token and trains two heads on the final tokens to find each
masked patch among the clip's masked patches (InfoNCE) and to reconstruct it (MSE)
(:mod:`aum_jax.training.masked_patches`). Patches do not overlap (a masked patch would show
through its neighbours); fine-tuning at other strides resizes the position embedding, as SSAST
fine-tunes at stride 10 what it pretrained at 16. ``W/model`` holds the backbone alone (no head,
no mask token, no SSL heads), for ``config.init.checkpoint`` of any recipe, ``aum_jax.hear`` and
``aum_jax.predict --embeddings``.

Variants (after ``:``, comma-separated):

- ``demo`` (default): the demo's tiny depth-2 Bi-Bi backbone on the demo's 64-bin, 96-frame
  clips, at strides 16: 4 x 6 patches (BENCHMARKS.md, "Self-supervised pretraining");
- ``tiny``, ``small``, ``base``: a 24-block AuM of that width (Fo-Bi, the AudioSet recipe's) on
  AudioSet's features (128 bins, 1024 frames: 8 x 64 patches), SSAST's batch and learning rate;
- ``runlocal``: a handful of steps on a few demo clips, seconds.

Any source aum-jax reads serves, its labels ignored: a datafile
(``--config.data.train_datafile=...``; with ``demo``: ``--config.demo.generate=False`` too), a
folder (``--config.data.source=folder --config.data.folder.root=...``: ROOT/unlabelled/ and any
class folders) or TFDS
(``--config.data.source=tfds --config.data.tfds.name=...``).
"""

import ml_collections
from aum_jax.configs import audioset, common, demo

SIZES = ("tiny", "small", "base")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant, local = common.parse_variant(arg, "demo", ("demo", *SIZES))
    if variant == "demo":
        config = demo.get_config()  # the demo's data, backbone, optimizer and schedule.
        config.model.strides = (16, 16)  # patches must not overlap.
        config.optimizer = common.get_optimizer_config(1e-3, warmup=False)
        config.optimizer.schedule = "constant"  # a fixed rate after the ramp, as SSAST's first epochs.
        config.optimizer.warmup_steps = 200  # a short ramp for the large rate.
        config.optimizer.warmup_interval = 1
        config.train = common.get_train_config(num_epochs=0, loss="CE", metric="loss")
        config.train.num_steps = 8000  # 64 epochs, about 8 minutes on a 2-core CPU: 4000 gained less (BENCHMARKS.md).
        config.train.log_every = 50
        config.train.checkpoint_every = 1000
    else:
        config = common.get_recipe_config(audioset.get_data_config(), None, families=("base_scratch",), lr=1e-4,
                                          num_epochs=10, loss="BCE", metric="loss", warmup=True)
        config.model.embed_dim = common.EMBED_DIMS[variant]  # the variant's width; 24 blocks.
        config.data.balanced_sampling = False  # every clip counts alike without labels.
        config.data.batch_size = 24  # clips per process (SSAST: 120 a step, over 4 GPUs).
        config.optimizer.schedule = "constant"
        config.train.num_epochs = 10  # SSAST pretrains AudioSet + LibriSpeech for 10 epochs.
        config.train.log_every = 100
    config.variant = f"pretrain,{variant}" + (",runlocal" if local else "")  # for the logs.
    config.train.objective = "masked_patches"  # aum_jax.training.objectives.OBJECTIVES.
    config.data.freqm = config.data.timem = 0  # no SpecAugment: masking is the task (SSAST pretrains without).
    config.data.mixup = 0.0  # no mixup (SSAST pretrains without).
    config.data.folder.classes_required = False  # a folder source: any clips, in class folders or unlabelled/.
    config.init = common.get_init_config("")
    config.eval = common.get_eval_config()
    config.eval.split = ""  # no labels to evaluate: the model is saved at the end.
    if local:
        common.apply_runlocal(config)
        if variant == "demo":
            config.demo = demo.get_config("runlocal").demo  # the demo runlocal's few clips, banks and rooms (its data).
    return config
