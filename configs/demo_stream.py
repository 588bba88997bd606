"""The one-pass demo: a causal keyword spotter that reads audio of any length, live, on a CPU.

  python -m aum_jax.main --config=configs/demo_stream.py --workdir=/tmp/aum_demo_stream

Generates its dataset into the cache on first use (``$AUM_JAX_CACHE/demo`` or
``~/.cache/aum_jax/demo``, :mod:`aum_jax.data.demo.stream_data`): seconds-long stretches of the
demo's background noise with its keywords spoken at random places by its voices (held out between
splits), the words' onsets and offsets written as DCASE TSVs (strong labels). It trains a causal
one-pass model (one token per 40 ms time slice, no position table, a score per slice) on each slice's
targets, keeps the best model on the validation stretches, and ends with a haystack table: a test
keyword hidden in 30 s and 2 min of noise, found by reading the file once as a stream
(``python -m aum_jax.predict --model-dir /tmp/aum_demo_stream/model --audio F --stream`` reads one live).
Its measured figures, per machine and seed, are in BENCHMARKS.md.

Variant ``runlocal``: a handful of steps on a tiny dataset, seconds; ``bidirectional``: a model that reads
each file both ways (it does not stream).
"""

import ml_collections
from aum_jax.configs import common, demo

PREP_STEP = ""  # generated on first use (config.demo.generate).
SLICE_FRAMES = common.SLICE_FRAMES  # a token is 4 frames (40 ms) of every mel bin: HEAR's 50 ms hop or finer.


def get_data_config() -> ml_collections.ConfigDict:
    """The demo's features and keywords, on stretches with their events, cropped at random."""
    c = demo.get_data_config()
    c.name = "demo_stream"
    c.train_datafile = "~/.cache/aum_jax/demo/train.json"  # set by config.demo.generate.
    c.audio_length = 400  # 4 s stretches: 100 time slices.
    c.frame_targets = True  # each slice trains on its own targets (the words' onsets and offsets).
    c.crop_seconds = (1.0, 4.0)  # crops of random length: the model reads any length from any start.
    c.freq_warp = 0.15  # vocal-tract-length warp, as the demo.
    c.freqm, c.timem = 4, 0  # frequency masks only: a time mask would hide a word its targets still name.
    c.cache_features = True  # the stretches' fbanks are computed once; the crops and masks are drawn each epoch.
    c.batch_size = 32  # as the demo.
    c.eval_batch_size = 40  # divides over 1, 2, 4 or 8 devices.
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    _, local = common.parse_variant(arg, "demo_stream", ("demo_stream",))
    config = ml_collections.ConfigDict()
    config.variant = common.variant_name("demo_stream", arg, local)  # for the logs.

    config.demo = ml_collections.ConfigDict()
    config.demo.generate = True  # generate or reuse the dataset and point config.data at it.
    config.demo.kind = "stretches"  # keywords at random places in seconds of noise, with their events.
    config.demo.cache_dir = ""  # "" = demo_data.default_cache_dir().
    config.demo.seed = 0  # dataset seed (byte-identical files per seed).
    config.demo.stretch_seconds = 4.0  # each stretch's length.
    config.demo.max_words = 3  # a stretch holds 0 to 3 keywords.
    config.demo.train_stretches = 2000  # training stretches.
    config.demo.valid_stretches = 100  # validation stretches (picks the best model).
    config.demo.eval_stretches = 200  # test stretches, spoken by held-out voices.
    config.demo.needles_per_word = 40  # the haystack's needles: the demo's test clips per keyword.

    config.data = get_data_config()

    config.model = common.get_model_config(config.data, "tiny", "Fo-Fo")
    kind = common.one_pass_type(arg) or "causal"  # ",bidirectional": the same reading both ways, for files.
    common.apply_one_pass(config, kind, SLICE_FRAMES)  # a token per 40 ms slice, no position table, a score per slice.
    config.model.depth = 4  # causal blocks read one direction: twice the blocks of the demo's Bi-Bi for its cost.
    config.model.remat = "dots_scan"  # as the demo.
    config.model.dt_min = 0.01  # state time constants of at most ~4 s at init (original 1e-3: ~40 s): the state a long stream settles in is one the 4 s crops trained.

    config.optimizer = common.get_optimizer_config(2e-3, warmup=False)
    config.optimizer.decay_start_epoch = 12  # halve the lr every epoch from the 13th.
    config.optimizer.warmup_steps = 50  # a short ramp for the large lr.
    config.optimizer.warmup_interval = 1

    config.train = common.get_train_config(num_epochs=16, loss="BCE", metric="mAP")
    config.train.objective = "events"  # frame targets from the events; clip labels pooled over time where none.
    config.train.log_every = 10
    config.train.checkpoint_every = 500  # about 2 minutes of training.
    config.train.eval_every = -1  # every epoch.

    config.init = common.get_init_config("")
    config.update(common.get_objective_configs())
    config.events.positives = "max"  # a word's best slice is its positive: a causal model fires once it has heard it.
    config.eval = common.get_eval_config(test_split="test")
    config.eval.haystack_seconds = (30.0, 120.0)  # a test keyword in 30 s and 2 min of noise.
    config.eval.haystack_placements = 10  # placements per length.
    config.mesh = common.get_mesh_config()

    if local:
        config.demo.train_stretches = 8
        config.demo.valid_stretches = 2
        config.demo.eval_stretches = 4
        config.demo.needles_per_word = 1
        common.apply_runlocal(config)
        config.data.audio_length = 400
        config.data.eval_batch_size = 8
        config.train.steps_per_epoch = 2
        config.eval.haystack_seconds = (10.0,)
        config.eval.haystack_placements = 2
    return config
