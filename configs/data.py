"""The data settings every dataset recipe starts from, and the recipes by name.

:func:`defaults` holds every knob of :mod:`aum_jax.data.pipeline.input_pipeline` at the original
``run.py`` default. Each ``configs/<dataset>.py`` writes its recipe (exps/*/*.sh) as one
flat block in its ``get_data_config()``, changing only what differs, and says how its files
are made in a module constant ``PREP_STEP`` (:func:`prep_step`); adding a dataset means adding
such a file, its label CSV and its name to :data:`DATASETS`, the one list of recipes. Each
source kind's settings are its section ``config.data.<kind>`` (from the registry,
:mod:`aum_jax.data.sources.registry`). Paths are relative to the repository root and point
where the ``scripts/prep_*.py`` tools write their datafiles; override them for your copy of
the data.
"""

from __future__ import annotations

import importlib

import ml_collections

from aum_jax.data.features.preprocessing import AUDIOSET_MEAN, AUDIOSET_STD
from aum_jax.data.sources import registry

DATASETS = (
    "audioset",
    "audioset_20k",
    "vggsound",
    "voxceleb",
    "speechcommands",
    "speechcommands_tfds",
    "epic_sounds",
    "demo",
)


def defaults() -> ml_collections.ConfigDict:
    """Every knob of the input pipeline, at the original run.py default."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.source = "datafile"  # a kind of registry.KINDS: "datafile" (JSON + label CSV), "tfds", "epic_sounds" or "folder" (configs/folder.py).
    c.train_datafile = ""  # JSON datafile of the training split.
    c.validation_datafile = ""  # JSON datafile of the validation split, evaluated during training (--data-val).
    c.test_datafile = ""  # JSON datafile of the test split ("" none).
    c.label_csv = ""  # index,mid,display_name.
    c.train_events = ""  # DCASE TSV (filename, onset, offset, event_label) of the training split's events ("" clip labels only; not in the original).
    c.validation_events = ""  # the same for the validation split.
    c.test_events = ""  # the same for the test split.
    c.frame_targets = False  # give each training clip frame targets from its events (config.train.objective=events; not in the original).
    c.crop_seconds = ()  # (shortest, longest): train on crops of random length, padded (needs frame_targets); () whole clips.
    c.balanced_sampling = False  # --bal bal: weighted sampling with replacement.
    c.weight_csv = ""  # per-clip weights (scripts/gen_weight_file.py) for balanced sampling; not read under label_fraction < 1 (weights from the kept labels).
    c.num_classes = 0  # number of classes (the model's num_classes).
    c.sample_rate = 16000  # Hz the clips are prepared at (the recipes' 16 kHz); clips at another rate are resampled to it (not in the original).
    c.num_mel_bins = 128  # --melbins.
    c.frame_shift_ms = 10.0  # --fshift (ms).
    c.audio_length = 1024  # --audio_length: frames after pad/cut (the model's audio_length).
    c.feature = "kaldi_fbank"  # "kaldi_fbank" (AudiosetDataset) or "epic_logmel".
    c.remove_waveform_mean = True  # subtract each clip's mean first, as the original; False: features of a live stream (not in the original).
    c.epic_window_ms = 10.0  # EPIC log-mel window (AUDIO_DATA.WINDOW_LENGTH).
    c.epic_hop_ms = 5.0  # EPIC log-mel hop (AUDIO_DATA.HOP_LENGTH).
    # The per-clip stages' knobs (aum_jax/data/pipeline/stages/: each stage names the keys it reads).
    c.freqm = 0  # max frequency-mask width (exclusive); 0 = none.
    c.timem = 0  # max time-mask width (exclusive); 0 = none.
    c.freq_warp = 0.0  # vocal-tract-length warp of the fbank's frequency axis by U[1 - w, 1 + w]; 0 = none (not in the original).
    c.mask_style = "torchaudio"  # "torchaudio" (one zero band) or "epic" (two mean bands).
    c.mixup = 0.0  # probability of waveform mixup per training clip.
    c.mixup_beta = 10.0  # mixup lambda ~ Beta(mixup_beta, mixup_beta) (the original: Beta(10, 10)).
    c.noise = False  # additive noise + time roll augmentation.
    c.noise_scale = 0.1  # noise is U[0,1) * U[0,1) * noise_scale (the original: / 10).
    c.noise_max_shift = 10  # the time roll is an integer in [-noise_max_shift, noise_max_shift).
    c.mean = AUDIOSET_MEAN  # --dataset_mean: fbank mean for normalisation (AudioSet's).
    c.std = AUDIOSET_STD  # --dataset_std: x -> (x - mean) / (2 * std).
    c.skip_norm = False  # skip normalisation (only to compute the stats).
    c.batch_size = 12  # training batch per process.
    c.eval_batch_size = 24  # evaluation batch per process (original: 2x training).
    c.seed = 3949  # exp_seeds[0] of the original run.py.
    c.label_fraction = 1.0  # keep the labels of this seeded, class-stratified share of the training clips; the rest train on the teacher's targets alone (config.distill), or not at all without one; not in the original.
    c.cache_features = False  # keep each training clip's fbank in memory after its first use (not in the original; needs no mixup and no random crops).
    c.num_workers = 4  # grain worker processes (--num-workers); 0 = in-process.
    c.read_threads = 2  # threads per worker reading and transforming clips.
    c.prefetch_buffer_size = 64  # clips buffered per worker.
    c.max_bad_fraction = 0.01  # stop once this fraction of clips failed to load.
    c.worker_parent_poll_s = 1.0  # workers check this often that the trainer lives (exit if not).
    for kind, section in registry.config_sections().items():
        c[kind] = section  # config.data.<kind>: the settings of that source kind.
    return c


def _recipe(name: str):
    """The module ``configs/<name>.py`` of a dataset of :data:`DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return importlib.import_module(f"aum_jax.configs.{name}")


def get_data_config(name: str) -> ml_collections.ConfigDict:
    """The data recipe of ``name`` (one of :data:`DATASETS`): ``configs/<name>.py``."""
    return _recipe(name).get_data_config()


def prep_step(name: str) -> str:
    """How the files of dataset ``name`` are made (its ``PREP_STEP``); "" for a name not in :data:`DATASETS`."""
    return _recipe(name).PREP_STEP if name in DATASETS else ""
