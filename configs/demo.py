"""The embedded demo: keyword spotting on the synthetic demo dataset, on a CPU.

  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo

Generates the dataset into the cache on first use (``$AUM_JAX_CACHE/demo`` or
``~/.cache/aum_jax/demo``): the keywords said by eSpeak NG and Kokoro-82M voices in simulated
rooms, through simulated microphones, over noise, babble, music or hum
(:mod:`aum_jax.data.demo.demo_data`). Trains a tiny (depth 2) Bi-Bi AuM for 16 epochs, keeps the
best model on the validation voices, and prints its accuracy and confusion matrices on two test
splits (10 classes: chance is 10%): ``test``, voices held out from training, and ``test_synth``,
a synthesizer held out from training (Piper); the matrices are also saved as
``workdir/confusion_<split>.png``. Its measured accuracy and wall time, per machine, seed and
kernel build, and what each ingredient of the data adds, are in BENCHMARKS.md.

Variant ``runlocal``: a handful of steps on a tiny dataset, seconds; ``causal`` or ``bidirectional``: the
model built for one pass (``configs/common.py``) on the same clips.
"""

import ml_collections
from aum_jax.configs import common, data
from aum_jax.data.demo import demo_data

PREP_STEP = ""  # generated on first use (config.demo.generate).


def get_data_config() -> ml_collections.ConfigDict:
    """The demo keywords, with the Speech Commands recipe shrunk for a few CPU minutes."""
    c = data.defaults()
    c.name = "demo"
    c.train_datafile = "~/.cache/aum_jax/demo/train.json"  # from demo_data (config.demo.generate points the run at it).
    c.validation_datafile = "~/.cache/aum_jax/demo/valid.json"  # validation voices.
    c.test_datafile = "~/.cache/aum_jax/demo/eval.json"  # held-out voices.
    c[f"{demo_data.SYNTH_TEST_SPLIT}_datafile"] = "~/.cache/aum_jax/demo/synth.json"  # the held-out synthesizer.
    c.label_csv = "data/demo/class_labels_indices.csv"  # the 10 keywords.
    c.num_classes = 10  # yes no up down left right on off stop go.
    c.num_mel_bins = 64  # half the bins: half the tokens, twice the speed on a CPU.
    c.audio_length = 96  # 1 s clips are 98 frames; 96 is a whole number of patches.
    c.freq_warp = 0.15  # vocal-tract-length warp by U[0.85, 1.15]: new voices have other formants.
    c.freqm, c.timem = 4, 6  # light SpecAugment: in a few epochs stronger masks slow learning more than they help.
    c.mixup = 0.0  # no mixup: a few epochs are too short to profit from it.
    c.noise = False  # no noise + roll: the clips already carry noise at 5-30 dB SNR and random onsets.
    c.mean, c.std = -5.0114145, 4.2837193  # scripts/get_norm_stats.py --dataset demo (seed 0).
    c.batch_size = 32  # small set, small batches.
    c.eval_batch_size = 80  # divides over 1, 2, 4, 8 or 16 devices.
    c.cache_features = True  # no mixup, no random crops: compute each clip's fbank once, in the first epoch.
    c.num_workers = 0  # tiny set: read in-process.
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _, local = common.parse_variant(arg, "demo", ("demo",))
    config = ml_collections.ConfigDict()
    config.variant = common.variant_name("demo", arg, local)  # for the logs.

    config.demo = ml_collections.ConfigDict()
    config.demo.generate = True  # generate or reuse the dataset and point config.data at it.
    config.demo.cache_dir = ""  # "" = demo_data.default_cache_dir().
    config.demo.seed = 0  # dataset seed (byte-identical files per seed).
    config.demo.clips_per_word = 400  # training clips per keyword: more voices, rates and pitches per word.
    config.demo.valid_clips_per_word = 20  # validation clips per keyword (picks the best model).
    config.demo.eval_clips_per_word = 40  # test clips per keyword, spoken by held-out voices.
    config.demo.synth_clips_per_word = 40  # test_synth clips per keyword, spoken by the held-out synthesizer.
    # The ingredients (demo_data.Recipe; each measured in BENCHMARKS.md):
    config.demo.synthesizers = ("espeak", "kokoro")  # who speaks train, valid and test: formant and neural voices.
    config.demo.heldout_synthesizer = "piper"  # who speaks test_synth alone ("" no test_synth).
    config.demo.bank_per_word = (24, 4, 8, 24)  # neural utterances per word: train, valid, test, test_synth.
    config.demo.speed = (0.85, 1.15)  # speed perturbation: pitch, formants and tempo ((1, 1) none).
    # The acoustics of train, valid and test (test_synth is always heard in these defaults, in 16 rooms of its own):
    config.demo.rooms = (64, 8, 16)  # simulated rooms of train, valid and test, disjoint (all 0: no rooms).
    config.demo.room_probability = 0.8  # a clip's chance of being said in a room.
    config.demo.mic_probability = 0.8  # a clip's chance of a random microphone and channel.
    config.demo.backgrounds = ("coloured", "babble", "music", "hum")  # each clip's background, drawn uniformly.

    config.data = get_data_config()

    config.model = common.get_model_config(config.data, "tiny", "Bi-Bi")
    config.model.depth = 2  # on 2 CPU cores, more epochs beat more blocks in a few minutes.
    config.model.strides = (8, 8)  # patches overlap in frequency and time: 7 x 11 tokens generalise best to new voices.
    config.model.remat = "dots_scan"  # keep the scans' readouts too: the CPU kernel's backward skips its forward.
    if common.one_pass_type(arg):
        common.apply_one_pass(config, common.one_pass_type(arg))

    config.optimizer = common.get_optimizer_config(2e-3, warmup=False)
    config.optimizer.decay_start_epoch = 12  # halve the lr every epoch from the 13th.
    config.optimizer.warmup_steps = 50  # a short ramp for the large lr.
    config.optimizer.warmup_interval = 1

    config.train = common.get_train_config(num_epochs=16, loss="CE", metric="accuracy")
    config.train.log_every = 10
    config.train.checkpoint_every = 500  # about 2 minutes of training.
    config.train.eval_every = -1  # every epoch.

    config.init = common.get_init_config("")
    config.update(common.get_objective_configs())
    config.eval = common.get_eval_config(test_split="test")
    config.eval.extra_test_splits = (demo_data.SYNTH_TEST_SPLIT,)  # the held-out synthesizer, beside the held-out voices.
    config.eval.confusion_matrix = True  # a single-label set: show which keywords are confused.
    config.mesh = common.get_mesh_config()

    if local:
        config.demo.clips_per_word = 4
        config.demo.valid_clips_per_word = 1
        config.demo.eval_clips_per_word = 2
        config.demo.synth_clips_per_word = 2
        config.demo.bank_per_word = (1, 1, 1, 1)  # the fewest neural utterances: one per word and split.
        config.demo.rooms = (2, 1, 1)
        common.apply_runlocal(config)
        config.data.eval_batch_size = 8
        config.train.steps_per_epoch = 2
    return config
