"""Per-dataset data settings, with the original AuM recipe values (exps/*/*.sh).

``get_data_config(name)`` returns the ``config.data`` ConfigDict that
:mod:`aum_jax.input_pipeline` reads. Every knob of the input pipeline lives here.
Paths are relative to the repository root and point where the ``scripts/prep_*.py``
tools write their datafiles; override them for your copy of the data.
"""

from __future__ import annotations

import ml_collections

from aum_jax.audio import AUDIOSET_MEAN, AUDIOSET_STD

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


def _common() -> ml_collections.ConfigDict:
    """Settings shared by every dataset (original run.py defaults)."""
    c = ml_collections.ConfigDict()
    c.name = ""
    c.source = "datafile"  # "datafile" (JSON + label CSV), "tfds" or "epic_sounds".
    c.train_datafile = ""  # JSON datafile of the training split.
    c.eval_datafile = ""  # JSON datafile evaluated during training (--data-val).
    c.label_csv = ""  # index,mid,display_name.
    c.balanced_sampling = False  # --bal bal: weighted sampling with replacement.
    c.weight_csv = ""  # per-clip weights (scripts/gen_weight_file.py) for balanced sampling.
    c.n_class = 0  # number of classes.
    c.num_mel_bins = 128  # --melbins.
    c.frame_shift_ms = 10.0  # --fshift (ms).
    c.target_length = 1024  # --audio_length: frames after pad/cut.
    c.feature = "kaldi_fbank"  # "kaldi_fbank" (AudiosetDataset) or "epic_logmel".
    c.epic_window_ms = 10.0  # EPIC log-mel window (AUDIO_DATA.WINDOW_LENGTH).
    c.epic_hop_ms = 5.0  # EPIC log-mel hop (AUDIO_DATA.HOP_LENGTH).
    c.freqm = 0  # max frequency-mask width (exclusive); 0 = none.
    c.timem = 0  # max time-mask width (exclusive); 0 = none.
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
    c.num_workers = 4  # grain worker processes (--num-workers); 0 = in-process.
    c.read_threads = 2  # threads per worker reading and transforming clips.
    c.prefetch_buffer_size = 64  # clips buffered per worker.
    c.max_bad_fraction = 0.01  # stop once this fraction of clips failed to load.
    c.worker_parent_poll_s = 1.0  # workers check this often that the trainer lives (exit if not).
    c.tfds_name = ""  # TFDS dataset name (source "tfds").
    c.tfds_data_dir = ""  # TFDS data_dir; "" = the TFDS default.
    c.tfds_train_split = "train"  # TFDS training split.
    c.tfds_eval_split = "validation"  # TFDS evaluation split.
    c.epic_hdf5 = ""  # EPIC-KITCHENS-100_audio.hdf5 (one dataset per video).
    c.epic_train_annotations = ""  # EPIC_Sounds_train.csv.
    c.epic_eval_annotations = ""  # EPIC_Sounds_validation.csv.
    c.epic_sample_rate = 24000  # EPIC audio sampling rate (Hz).
    c.epic_clip_secs = 10.0  # EPIC crop length: audio_length / 100 seconds.
    return c


def get_data_config(name: str) -> ml_collections.ConfigDict:
    """The data config of ``name`` (one of :data:`DATASETS`)."""
    c = _common()
    c.name = name
    if name in ("audioset", "audioset_20k"):
        root = "data/audioset"
        c.label_csv = f"{root}/class_labels_indices.csv"  # 527 AudioSet classes.
        c.eval_datafile = f"{root}/datafiles/eval.json"  # AudioSet eval segments.
        c.n_class = 527  # AudioSet ontology classes.
        c.freqm, c.timem, c.mixup = 48, 192, 0.5  # exps/audioset*/aum-*.sh.
        c.mean, c.std = AUDIOSET_MEAN, AUDIOSET_STD  # AudioSet fbank stats.
        if name == "audioset":
            c.train_datafile = f"{root}/datafiles/unbalanced.json"  # full 2M set.
            c.balanced_sampling = True  # --bal bal.
            c.weight_csv = f"{root}/datafiles/unbalanced_weight.csv"  # from gen_weight_file.
        else:
            c.train_datafile = f"{root}/datafiles/balanced.json"  # 20k balanced subset.
    elif name == "vggsound":
        root = "data/vggsound"
        c.train_datafile = f"{root}/datafiles/vgg_train.json"  # VGGSound train.
        c.eval_datafile = f"{root}/datafiles/vgg_test.json"  # VGGSound test.
        c.label_csv = f"{root}/class_labels_indices.csv"  # 309 classes.
        c.n_class = 309  # VGGSound classes.
        c.freqm, c.timem, c.mixup = 48, 192, 0.0  # exps/vggsound/aum-*.sh (bal=full: none).
        c.mean, c.std = -5.0767093, 4.4533687  # VGGSound fbank stats.
    elif name == "voxceleb":
        root = "data/voxceleb"
        c.train_datafile = f"{root}/datafiles/train_data.json"  # VoxCeleb1 identification train.
        c.eval_datafile = f"{root}/datafiles/test_data.json"  # VoxCeleb1 identification test.
        c.label_csv = f"{root}/class_labels_indices.csv"  # 1251 speakers.
        c.n_class = 1251  # VoxCeleb1 speakers.
        c.freqm, c.timem, c.mixup = 48, 192, 0.0  # exps/voxceleb/aum-*.sh.
        c.mean, c.std = -3.7614744, 4.2011642  # VoxCeleb fbank stats.
    elif name in ("speechcommands", "speechcommands_tfds"):
        c.n_class = 35  # Speech Commands V2, 35 words.
        c.target_length = 128  # 1 s clips -> 98 frames, padded to 128.
        c.freqm, c.timem, c.mixup = 48, 48, 0.6  # exps/speechcommands/aum-*.sh.
        c.noise = True  # noise augmentation on.
        c.mean, c.std = -6.845978, 5.5654526  # Speech Commands fbank stats.
        c.batch_size, c.eval_batch_size = 128, 256  # batch_size=128, eval 2x.
        if name == "speechcommands":
            root = "data/speechcommands"
            c.train_datafile = f"{root}/datafiles/speechcommand_train_data.json"  # train split.
            c.eval_datafile = f"{root}/datafiles/speechcommand_valid_data.json"  # validation.
            c.test_datafile = f"{root}/datafiles/speechcommand_eval_data.json"  # test split.
            c.label_csv = f"{root}/speechcommands_class_labels_indices.csv"  # 35 words.
        else:
            c.source = "tfds"  # tfds.data_source("speech_commands") (ArrayRecord).
            c.tfds_name = "speech_commands"  # TFDS v0.02 build: 10 words + silence + unknown.
            c.n_class = 12  # the TFDS label set, not the original's 35.
            c.tfds_test_split = "test"  # TFDS test split.
    elif name == "epic_sounds":
        c.source = "epic_sounds"  # HDF5 audio + annotation CSV.
        c.epic_hdf5 = "data/epic_sounds/EPIC-KITCHENS-100_audio.hdf5"  # per-video audio.
        c.epic_train_annotations = "data/epic_sounds/EPIC_Sounds_train.csv"  # train list.
        c.epic_eval_annotations = "data/epic_sounds/EPIC_Sounds_validation.csv"  # val list.
        c.label_csv = "data/epic_sounds/class_labels_indices.csv"  # 44 classes (names).
        c.n_class = 44  # EPIC-Sounds classes.
        c.feature = "epic_logmel"  # librosa log-mel at 24 kHz, 10 ms window, 5 ms hop.
        c.mask_style = "epic"  # two mean-filled masks per axis.
        c.freqm, c.timem = 48, 192  # F_MASK, T_MASK = timem * audio_length / 1024.
        c.skip_norm = True  # the original feeds EPIC log-mels unnormalised.
    elif name == "demo":
        root = "~/.cache/aum_jax/demo"  # demo_data.default_cache_dir() without AUM_JAX_CACHE.
        c.train_datafile = f"{root}/train.json"  # from demo_data.generate_demo_dataset.
        c.eval_datafile = f"{root}/valid.json"  # validation voices.
        c.test_datafile = f"{root}/eval.json"  # held-out voices.
        c.label_csv = "data/demo/class_labels_indices.csv"  # the 10 keywords.
        c.n_class = 10  # yes no up down left right on off stop go.
        c.target_length = 128  # 1 s keyword clips, as Speech Commands.
        c.freqm, c.timem, c.mixup = 48, 48, 0.6  # the Speech Commands recipe.
        c.noise = True  # the Speech Commands recipe.
        c.mean, c.std = -5.0114145, 4.2837193  # scripts/get_norm_stats.py --dataset demo (seed 0).
        c.batch_size, c.eval_batch_size = 32, 64  # small set, small batches.
        c.num_workers = 0  # tiny set: read in-process.
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return c
