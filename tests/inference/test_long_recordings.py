"""Long recordings in bounded memory, with real files and processes: on a 30-minute recording (the
tiny Fo-Bi model, at its own rate) the peak resident memory of predict (every window,
--embeddings) is within 1.2x of a 3-minute one's, and so is hear.get_timestamp_embeddings'
peak less the input array the caller holds; beyond its result that call allocates what a 3-minute
call does. predict --whole with a Bi-Bi one-pass model (read in chunks) keeps within 1.2x too; a
single pass's memory, which grows, is estimated within 2x of what it takes."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile

from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.models import AuMConfig, init_model
from tests.cli.test_no_silent_errors import PREP
from tests.helpers import OPTIMIZED, PEAK_RSS, SAMPLE, run, save_tiny_fobi

RATIO = 1.2
WINDOWS = {3: 141, 30: 1407}  # of the model's 1.28 s input: 3 * 60 / 1.28 = 140.6, 30 * 60 / 1.28 = 1406.25.
# Runs hear.get_timestamp_embeddings on each recording given (after a first call that compiles the model)
# and prints, per recording, its size, the result's, the call's peak resident memory (VmHWM, reset when the
# call starts) and the peak of the call's NumPy and Python allocations (tracemalloc).
HEAR_PEAKS = textwrap.dedent("""
    import json, sys, tracemalloc
    import soundfile
    from aum_jax import hear

    def kb(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

    model = hear.load_model(sys.argv[1])
    hear.get_timestamp_embeddings(soundfile.read(sys.argv[2], frames=16000, dtype="float32")[0][None], model)
    for path in sys.argv[2:]:
        audio = soundfile.read(path, dtype="float32")[0][None]
        start = kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM starts again from VmRSS.
        tracemalloc.start()
        emb, ms = hear.get_timestamp_embeddings(audio, model)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(json.dumps({"input": audio.nbytes, "result": emb.nbytes + ms.nbytes, "start_kb": start,
                          "peak_kb": kb("VmHWM"), "traced": traced, "shape": emb.shape}))
        del audio, emb, ms
""")


# Runs whole.classify_whole on a short recording (its one-off costs: loading the fbank's and the model's code),
# then on a long one, and prints the resident memory the long call added (VmHWM, reset when it starts, less
# VmRSS then) and whole.estimate_whole_mb's figure for it.
WHOLE_PEAK = textwrap.dedent("""
    import json, sys
    import soundfile
    from aum_jax.checkpoints import model_files
    from aum_jax.inference import whole

    def kb(key):
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

    model, prep = model_files.load_model(sys.argv[1]), model_files.load_preprocessing(sys.argv[1])
    whole.classify_whole(model, prep, sys.argv[2])
    start = kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    whole.classify_whole(model, prep, sys.argv[3])
    info = soundfile.info(sys.argv[3])
    print(json.dumps({"added_mb": (kb("VmHWM") - start) / 1024,
                      "estimate_mb": whole.estimate_whole_mb(model, prep, info.frames, info.samplerate)}))
""")


def _recording(path: Path, minutes: int) -> Path:
    """Tones in noise, written in 10 s blocks (the test never holds the whole recording either)."""
    rng = np.random.default_rng(minutes)
    t = np.arange(160_000) / 16_000
    with soundfile.SoundFile(path, "w", 16_000, 1, "PCM_16") as f:
        for _ in range(6 * minutes):
            f.write((0.2 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t) + 0.02 * rng.normal(size=t.size)))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_fobi(tmp_path_factory.mktemp("model") / "m", mean=PREP.mean, std=PREP.std, loss=PREP.loss)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[int, Path]:
    """3 and 30 minutes of tones in noise at 16 kHz, the model's rate (written once, in 10 s blocks)."""
    folder = tmp_path_factory.mktemp("recordings")
    return {minutes: _recording(folder / f"rec{minutes}.wav", minutes) for minutes in WINDOWS}


# The first input alone reads only its first seconds: test_predict's test_a_long_files_first_input_is_read_from_its_start_alone.
@pytest.mark.parametrize("flags, says", [
    (["--hop-seconds", "1.28", "--json", "{out}", "--top-k", "1"], "Wrote {out}"),
    (["--embeddings", "{out}"], "Wrote {out}: {windows} rows of 1 files (one per window)"),
], ids=["every window", "embeddings"])
def test_predicts_peak_memory_does_not_grow_with_the_recording(model_dir, recordings, tmp_path, flags, says):
    peaks = {}
    for minutes, wav in recordings.items():
        out = tmp_path / f"out{minutes}"
        result = run("-c", PEAK_RSS, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(wav),
                     *(flag.format(out=out) for flag in flags), env=OPTIMIZED)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert measured["rc"] == 0, measured["stderr"]
        assert says.format(wav=wav, out=out, seconds=minutes * 60.0, windows=WINDOWS[minutes]) in (
            measured["stdout"] + measured["stderr"]), measured
        if "--json" in flags:
            assert len(json.loads(out.read_text())["files"][0]["windows"]) == WINDOWS[minutes]
        peaks[minutes] = measured["kb"] / 1024
    assert peaks[30] < RATIO * peaks[3], f"peak MB {peaks}"


def test_hears_timestamp_embeddings_hold_their_result_and_a_few_batches(model_dir, recordings):
    result = run("-c", HEAR_PEAKS, str(model_dir), str(recordings[3]), str(recordings[30]), env=OPTIMIZED)
    assert result.returncode == 0, result.stderr[-3000:]
    short, long = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert short["shape"] == [1, 140 * 8 + 5, 192] and long["shape"] == [1, 1406 * 8 + 2, 192]  # patches on audio.
    mb = {name: {k: (v * 1024 if k.endswith("_kb") else v) / 2**20 for k, v in run_.items() if k != "shape"}
          for name, run_ in (("3 min", short), ("30 min", long))}
    held = {name: m["peak_kb"] - m["input"] for name, m in mb.items()}  # the caller holds the input.
    assert held["30 min"] < RATIO * held["3 min"], f"peak less the input, MB: {held}; all: {mb}"
    # Beyond its result the call holds a few batches of windows (their features, the model's tokens),
    # whatever the length: within 2x of a 3-minute call's working set, the batches in flight varying;
    # every window's tokens, gathered, would be 10x.
    working = {name: m["traced"] - m["result"] for name, m in mb.items()}
    assert working["30 min"] < 2 * working["3 min"], f"allocations beyond the result, MB: {working}; all: {mb}"


@pytest.mark.parametrize("minutes", [1, 3])
def test_a_single_passs_memory_is_estimated_within_2x(model_dir, tmp_path, minutes):
    """The tiny Fo-Bi model (a patch grid: one single pass) over 1 and 3 minutes, each in its own process."""
    long = _recording(tmp_path / "long.wav", minutes)
    result = run("-c", WHOLE_PEAK, str(model_dir), str(SAMPLE), str(long), env=OPTIMIZED)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.5 < measured["estimate_mb"] / measured["added_mb"] < 2.0, measured


@pytest.fixture(scope="module")
def one_pass_dir(tmp_path_factory) -> Path:
    """A Bi-Bi one-pass model (64 bins, 40 ms slices, 2 blocks, 48 wide), its features made as audio is read."""
    config = AuMConfig(num_mel_bins=64, audio_length=96, patch_size=(64, 4), strides=(64, 4), embed_dim=48, depth=2,
                       num_classes=3, bimamba_type="v2", cls_position="none", pool="max", position="none")
    prep = Preprocessing(num_mel_bins=64, target_length=96, mean=-5.0, std=4.0, loss="BCE", class_names=("a", "b", "c"),
                         remove_waveform_mean=False)
    return save_model(init_model(config, 0), tmp_path_factory.mktemp("one_pass") / "m", preprocessing=prep)


def test_predict_whole_reads_a_bi_bi_one_pass_model_in_bounded_memory(one_pass_dir, recordings, tmp_path):
    peaks = {}
    for minutes, wav in recordings.items():
        out = tmp_path / f"out{minutes}.json"
        result = run("-c", PEAK_RSS, "-m", "aum_jax.predict", "--model-dir", str(one_pass_dir), "--audio", str(wav),
                     "--whole", "--json", str(out), env=OPTIMIZED)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert measured["rc"] == 0, measured["stderr"]
        assert "read in chunks" in measured["stderr"], measured["stderr"]
        assert len(json.loads(out.read_text())["files"][0]["windows"]) == (minutes * 60 * 100 - 2) // 4
        peaks[minutes] = measured["kb"] / 1024
    assert peaks[30] < RATIO * peaks[3], f"peak MB {peaks}"
