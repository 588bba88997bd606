"""Shared pieces of the training configs: model, optimizer, train, init, eval and mesh.

Each ``configs/<dataset>.py`` calls :func:`get_recipe_config` with its data recipe and
the numbers of its ``exps/<dataset>/aum-*.sh`` recipes. The string after ``:`` on the command line picks
a variant, a comma-separated list of:

- a checkpoint family: ``base_scratch`` (base, Fo-Bi, random init), ``small_imgnet``
  (small, Bi-Bi, from the ViM-S ImageNet checkpoint) or ``base_audioset`` (base,
  Fo-Bi, from an AuM-B AudioSet checkpoint);
- ``runlocal``: a depth-2 tiny model and a few steps on small batches,
  to check a setup on a CPU in well under a minute;
- ``causal`` or ``bidirectional``: the model built for one pass (:func:`apply_one_pass`), beside
  the original's Fo-Fo, Fo-Bi and Bi-Bi types: it reads a file of any length once (``bidirectional``),
  or a live stream (``causal``).

Defaults are those of the original ``src/run.py`` and ``src/traintest.py``.
"""

from __future__ import annotations

import ml_collections

from aum_jax.models import AUM_TYPES, EMBED_DIMS, AuMConfig
from aum_jax.training import objectives

FAMILIES: dict[str, tuple[str, str, str]] = {
    # family: (size, aum_type, pretrained source kind: "" none, "vim", "aum")
    "base_scratch": ("base", "Fo-Bi", ""),
    "small_imgnet": ("small", "Bi-Bi", "vim"),
    "base_audioset": ("base", "Fo-Bi", "aum"),
}
# Where the pretrained sources are expected; override with --config.init.checkpoint.
PRETRAINED = {
    "vim": "data/pretrained/vim_s_midclstok_80p5acc.pth",  # ViM-S, middle cls token.
    "aum": "data/pretrained/aum-base_audioset.pth",  # an AuM-B trained on AudioSet.
}
LOCAL_FLAGS = ("runlocal",)
# The one-pass readings, beside the original's types (AUM_TYPES): the mixer each reads with.
ONE_PASS_TYPES = {"causal": "Fo-Fo", "bidirectional": "Bi-Bi"}
SLICE_FRAMES = 4  # a one-pass token: 4 frames (40 ms) of every mel bin, HEAR's 50 ms hop or finer.


def parse_variant(arg: str | None, default: str, families: tuple[str, ...]) -> tuple[str, bool]:
    """``"small_imgnet,runlocal"`` -> ``("small_imgnet", True)``; a one-pass flag is read by :func:`one_pass_type`."""
    family, local = default, False
    for part in filter(None, (arg or "").split(",")):
        if part in LOCAL_FLAGS:
            local = True
        elif part in families:
            family = part
        elif part not in ONE_PASS_TYPES:
            raise ValueError(f"unknown config variant {part!r}; choose from "
                             f"{families + LOCAL_FLAGS + tuple(ONE_PASS_TYPES)}")
    return family, local


def one_pass_type(arg: str | None) -> str:
    """The one-pass flag of a variant string (``"base_scratch,causal"`` -> ``"causal"``), "" for none."""
    flags = [part for part in (arg or "").split(",") if part in ONE_PASS_TYPES]
    if len(flags) > 1:
        raise ValueError(f"config variant {arg!r} names two one-pass types; choose one of {tuple(ONE_PASS_TYPES)}")
    return flags[0] if flags else ""


def variant_name(name: str, arg: str | None, local: bool) -> str:
    """The variant a config was built as, for the logs: ``"base_scratch,causal,runlocal"``."""
    return ",".join(filter(None, (name, one_pass_type(arg), "runlocal" if local else "")))


def apply_one_pass(config: ml_collections.ConfigDict, kind: str, slice_frames: int = SLICE_FRAMES) -> None:
    """Makes ``config.model`` a model built for one pass, in place: one token per ``slice_frames`` frames of
    every mel bin (a token is complete as soon as its slice of audio has arrived), no position table (the
    recurrence gives the order, so any length reads), no cls token and a score per token (a clip's score
    its best token's), the mixer of ``ONE_PASS_TYPES[kind]``; and features that never see a whole clip's
    mean (a live source has none)."""
    model, bins = config.model, config.data.num_mel_bins
    model.bimamba_type = AUM_TYPES[ONE_PASS_TYPES[kind]]
    model.patch_size = model.strides = (bins, slice_frames)
    model.position, model.cls_position, model.pool = "none", "none", "max"
    config.data.remove_waveform_mean = False


def get_model_config(data: ml_collections.ConfigDict, size: str, aum_type: str) -> ml_collections.ConfigDict:
    """Every ``AuMConfig`` field; input shape and class count follow ``data`` by reference."""
    c = ml_collections.ConfigDict(AuMConfig().to_dict())
    c.embed_dim = EMBED_DIMS[size]  # tiny 192, small 384, base 768 (--model_type).
    c.bimamba_type = AUM_TYPES[aum_type]  # --aum_type: Fo-Fo none, Fo-Bi v1, Bi-Bi v2.
    c.depth = 24  # every original size has 24 blocks.
    c.patch_size = (16, 16)  # --fpatch_size, --tpatch_size.
    c.strides = (16, 16)  # --fstride, --tstride of every aum-*.sh recipe.
    c.drop_path_rate = 0.0  # --aum_drop_path.
    c.num_mel_bins = data.get_ref("num_mel_bins")  # follows config.data.
    c.audio_length = data.get_ref("audio_length")  # follows config.data.
    c.num_classes = data.get_ref("num_classes")  # follows config.data.
    return c


def get_optimizer_config(lr: float, *, warmup: bool) -> ml_collections.ConfigDict:
    """torch Adam with L2 weight decay, MultiStepLR over epochs, optional step warm-up."""
    c = ml_collections.ConfigDict()
    c.lr = lr  # --lr: peak learning rate.
    c.b1 = 0.95  # Adam beta1 (traintest.py).
    c.b2 = 0.999  # Adam beta2.
    c.eps = 1e-8  # Adam epsilon.
    c.weight_decay = 5e-7  # --weight_decay, added to the gradient (L2) as torch Adam does.
    c.schedule = "multistep"  # "multistep" (MultiStepLR) or "constant".
    c.decay_start_epoch = 2  # --lrscheduler_start: first epoch (0-based count done) with decayed lr.
    c.decay_every_epochs = 1  # --lrscheduler_step.
    c.decay_factor = 0.5  # --lrscheduler_decay.
    c.warmup_steps = 1000 if warmup else 0  # --warmup: linear ramp from 0 over 1000 iterations.
    c.warmup_epochs = 0.0  # > 0: ramp over this many epochs instead (EPIC-Sounds: 2).
    c.warmup_start = 0.0  # lr fraction the ramp starts at (EPIC-Sounds: 0.01).
    c.warmup_interval = 50  # the ramp rises every this many steps (the original's staircase).
    return c


def get_train_config(num_epochs: int, loss: str, metric: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_epochs = num_epochs  # --n-epochs.
    c.num_steps = -1  # > 0: stop after this many steps instead of num_epochs.
    c.steps_per_epoch = -1  # -1: training clips // global batch.
    c.loss = loss  # --loss: "BCE" (sigmoid, multi-label and mixup) or "CE" (softmax, argmax label).
    c.objective = "supervised"  # what a step minimises, by name in aum_jax.training.objectives.OBJECTIVES; "supervised": the label loss (the original).
    c.metric = metric  # --metrics: picks the best model; "mAP", "mAUC", "d_prime", "accuracy" (higher is better) or "loss" (lower is better).
    c.seed = 0  # model initialisation seed (the data seed is config.data.seed).
    c.log_every = 100  # --n-print-steps: steps between logged training scalars.
    c.eval_every = -1  # steps between evaluations; -1: every epoch (the original), 0: only at the end.
    c.checkpoint_every = 1000  # steps between training checkpoints (and at the end, on SIGTERM, on errors).
    c.keep_checkpoints = 3  # training checkpoints kept in workdir/checkpoints.
    c.matmul_precision = "highest"  # float32 matmuls: "highest" is the original's fp32; "tensorfloat32" (TF32 on GPU, ~1e-3 off, faster) or "bfloat16" trade accuracy for speed.
    c.max_nonfinite_steps = 10  # diverged after this many bad steps in a row (each is skipped); not in the original.
    c.max_loss = 1e4  # a step with a larger mean loss is bad (healthy runs stay below ~10).
    c.max_grad_norm = 1e6  # a step with a larger global gradient norm is bad (healthy: below ~1e2).
    c.stop_check_every = 10  # multi-process: steps between checks for a SIGTERM on any process.
    c.lock_heartbeat_s = 10.0  # seconds between touches of workdir/lock.json.
    c.lock_stale_after_s = 120.0  # a lock from another host untouched this long is taken over.
    return c


def get_init_config(kind: str) -> ml_collections.ConfigDict:
    """The pretrained source (--imagenet_pretrain / --aum_pretrain); empty: random init."""
    c = ml_collections.ConfigDict()
    c.checkpoint = PRETRAINED.get(kind, "")  # a .pth (ViM or AuM) or an aum-jax model directory.
    c.kind = kind  # "vim", "aum", or "" to detect from the .pth keys.
    c.verify = True  # a model directory must have checksums.json (False: load it unchecked, with a warning).
    c.vim_cls_position = "middle"  # --imagenet_load_middle_cls_token: ViM cls entry layout.
    c.source_strides = (16, 16)  # --aum_pretrain_fstride/tstride of an AuM source.
    c.source_num_mel_bins = 128  # mel bins the AuM source was trained with.
    return c


def get_objective_configs() -> dict[str, ml_collections.ConfigDict]:
    """``{key: settings}`` of every registered objective with settings of its own (``config.distill``,
    ``config.pretrain``), at its defaults (:data:`aum_jax.training.objectives.OBJECTIVES`)."""
    return {o.config_key: o.default_config() for o in objectives.OBJECTIVES.values() if o.default_config}


def get_eval_config(test_split: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.split = "validation"  # split evaluated during training and by --mode=eval (config.data.validation_datafile).
    c.test_split = test_split  # "test": evaluated once with the best model after training ("" none).
    c.extra_test_splits = ()  # more splits evaluated once with the best model after training and by --mode=eval, each its own row of the results table; each reads config.data.<split>_datafile.
    c.matmul_precision = "highest"  # float32 matmuls in evaluation: the original's fp32 (see train.matmul_precision).
    c.model_dir = ""  # --mode=eval: model directory to evaluate; "" = workdir/model, else latest checkpoint.
    c.confusion_matrix = False  # after training: print and plot (workdir/confusion_<split>.png) the test split's confusion matrix; not in the original.
    c.haystack_seconds = ()  # after training: hide needles in noise of these lengths (s) and find them (workdir/haystack.json); () none; not in the original.
    c.haystack_placements = 10  # placements per haystack length (each a random needle at a random place).
    c.haystack_seed = 0  # seed of the placements.
    c.haystack_clips = ""  # the needles: a folder in the demo dataset's layout (the one-pass demo sets it).
    return c


def get_mesh_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_axis = "data"  # name of the data-parallel mesh axis; parameters are replicated.
    c.num_devices = -1  # devices on the data axis; -1: all devices of all processes.
    return c


def get_recipe_config(
    data: ml_collections.ConfigDict,
    arg: str | None,
    *,
    families: tuple[str, ...],
    lr: float,
    num_epochs: int,
    loss: str,
    metric: str,
    warmup: bool,
    decay: tuple[int, int, float] = (2, 1, 0.5),
    test_split: str = "",
) -> ml_collections.ConfigDict:
    """A full config for one ``exps/<dataset>/aum-<family>-*.sh`` recipe.

    Args:
      data: the dataset's data recipe (its ``get_data_config()``).
      arg: the variant string after ``:`` (see the module docstring).
      families: checkpoint families the original provides for this dataset; the first
        is the default.
      lr, num_epochs, loss, metric, warmup: the recipe's --lr, --n-epochs, --loss,
        --metrics and --warmup.
      decay: (--lrscheduler_start, --lrscheduler_step, --lrscheduler_decay).
      test_split: split evaluated with the best model at the end.
    """
    family, local = parse_variant(arg, families[0], families)
    size, aum_type, kind = FAMILIES[family]
    config = ml_collections.ConfigDict()
    config.variant = variant_name(family, arg, local)  # for the logs.
    config.data = data
    config.model = get_model_config(config.data, size, aum_type)
    config.optimizer = get_optimizer_config(lr, warmup=warmup)
    (config.optimizer.decay_start_epoch, config.optimizer.decay_every_epochs,
     config.optimizer.decay_factor) = decay
    config.train = get_train_config(num_epochs, loss, metric)
    config.init = get_init_config(kind)
    config.update(get_objective_configs())
    config.eval = get_eval_config(test_split)
    config.mesh = get_mesh_config()
    if one_pass_type(arg):
        apply_one_pass(config, one_pass_type(arg))
    if local:
        apply_runlocal(config)
    return config


def apply_runlocal(config: ml_collections.ConfigDict) -> None:
    """Shrinks ``config`` in place: tiny depth-2 model, short clips, a few small steps."""
    config.model.embed_dim = EMBED_DIMS["tiny"]
    config.model.depth = 2
    config.init.checkpoint = ""
    config.data.audio_length = 64
    config.data.batch_size = 4
    config.data.eval_batch_size = 8
    config.data.num_workers = 0
    config.train.num_steps = 4
    config.train.steps_per_epoch = 2
    config.train.log_every = 1
    config.train.eval_every = 0
    config.train.checkpoint_every = 2
    config.optimizer.warmup_steps = 0
    config.optimizer.warmup_epochs = 0.0

