"""Tests of the synthetic keyword-spotting demo dataset: its splits, voices, acoustics and bytes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from scipy.signal import stft

from aum_jax.data.demo import demo_data, espeak
from aum_jax.data.demo.voices import espeak_ng
from tests.helpers import REPO_ROOT

# Every ingredient on, small: two synthesizers, the held-out one, rooms, microphones, every background.
TINY = dict(clips_per_word=4, valid_clips_per_word=1, eval_clips_per_word=2, synth_clips_per_word=2, show_progress=False,
            recipe=demo_data.Recipe(bank_per_word=(2, 1, 1, 1), rooms=(2, 1, 1)))


# Smaller: three words, no valid split, a banked held-out synthesizer of 3 utterances per word and 8 clips per word
# (24 clips: every background). SMALL's synth files must not depend on its training voices and acoustics: PLAIN
# has the same sizes, spoken by eSpeak NG alone, in none of the acoustics.
SMALL = dict(words=("yes", "no", "go"), clips_per_word=2, valid_clips_per_word=0, eval_clips_per_word=2,
             synth_clips_per_word=8, show_progress=False)
SMALL_RECIPE = demo_data.Recipe(bank_per_word=(1, 1, 1, 3), rooms=(1, 1, 1))
PLAIN_RECIPE = demo_data.Recipe(synthesizers=("espeak",), speed=(1.0, 1.0), rooms=(0, 0, 0), mic_probability=0.0,
                                backgrounds=("coloured",), bank_per_word=(1, 1, 1, 3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> demo_data.DemoDataset:
    return demo_data.generate_demo_dataset(tmp_path_factory.mktemp("demo_a"), seed=0, num_workers=2, **TINY)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> demo_data.DemoDataset:
    return demo_data.generate_demo_dataset(tmp_path_factory.mktemp("small"), seed=0, num_workers=2, recipe=SMALL_RECIPE,
                                           **SMALL)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> demo_data.DemoDataset:
    return demo_data.generate_demo_dataset(tmp_path_factory.mktemp("plain"), seed=0, recipe=PLAIN_RECIPE, **SMALL)


def _datafile_entries(path: Path) -> list[dict[str, str]]:
    return json.loads(path.read_text())["data"]


def _all_entries(ds: demo_data.DemoDataset) -> list[dict[str, str]]:
    return [e for p in (ds.train_json, ds.valid_json, ds.eval_json, ds.synth_json) for e in _datafile_entries(p)]


def _clips(ds: demo_data.DemoDataset) -> list[dict[str, str]]:
    with (ds.root / "clips.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_clips_are_one_second_mono_16k_pcm16(tiny: demo_data.DemoDataset) -> None:
    entries = _all_entries(tiny)
    assert len(entries) == 10 * (4 + 1 + 2 + 2)
    for entry in entries:
        assert not Path(entry["wav"]).is_absolute()
        info = soundfile.info(tiny.root / entry["wav"])
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16_000, 1, 16_000, "PCM_16")


def test_labels_match_class_csv(tiny: demo_data.DemoDataset) -> None:
    with tiny.label_csv.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["index", "mid", "display_name"]
    assert [int(r[0]) for r in rows[1:]] == list(range(tiny.num_classes))
    mids = {r[1] for r in rows[1:]}
    assert tiny.num_classes == len(demo_data.KEYWORDS) == len(mids)
    assert {e["labels"] for e in _datafile_entries(tiny.train_json)} == mids
    assert {e["labels"] for e in _all_entries(tiny)} <= mids


def test_repository_label_csv_matches_generated(tiny: demo_data.DemoDataset) -> None:
    shipped = REPO_ROOT / "data" / "demo" / "class_labels_indices.csv"
    assert shipped.read_bytes() == tiny.label_csv.read_bytes()


def test_voices_rooms_and_the_synthesizer_are_held_out(tiny: demo_data.DemoDataset) -> None:
    manifest = json.loads((tiny.root / "manifest.json").read_text())
    voices = {split: {f"{name}:{v}" for name, vs in info["voices"].items() for v in vs}
              for split, info in manifest["splits"].items()}
    kokoro = {split: set(info["voices"].get("kokoro", [])) for split, info in manifest["splits"].items()}
    assert not voices["train"] & voices["eval"] and not kokoro["train"] & kokoro["eval"]
    assert not voices["valid"] & voices["eval"]
    assert not {v for v in voices["train"] if v.startswith("espeak:")} & voices["valid"]
    assert set(manifest["splits"]["synth"]["voices"]) == {"piper"}
    utterances = {row["wav"]: row for row in csv.DictReader((tiny.root / "utterances.csv").open(newline=""))}
    by_split = {split: {c["synthesizer"] for c in _clips(tiny) if c["split"] == split} for split in voices}
    assert by_split == {"train": {"espeak", "kokoro"}, "valid": {"espeak", "kokoro"}, "eval": {"espeak", "kokoro"},
                        "synth": {"piper"}}
    for clip in _clips(tiny):
        if clip["synthesizer"] == "espeak":
            assert f"espeak:{clip['voice']}" in voices[clip["split"]]
        else:  # a banked utterance of the clip's own split, word and synthesizer
            said = utterances[clip["voice"]]
            assert (said["split"], said["word"], said["synthesizer"]) == (clip["split"], clip["word"],
                                                                        clip["synthesizer"])
        assert not clip["room"] or clip["room"].startswith(f"rooms/{clip['split']}/")


def test_same_seed_same_bytes_other_seed_differs(small: demo_data.DemoDataset, tmp_path: Path) -> None:
    again = demo_data.generate_demo_dataset(tmp_path / "b", seed=0, num_workers=1, recipe=SMALL_RECIPE, **SMALL)
    other = demo_data.generate_demo_dataset(tmp_path / "c", seed=1, num_workers=1, recipe=SMALL_RECIPE, **SMALL)
    reference = _tree_bytes(small.root)
    assert any(name.startswith("rooms/") for name in reference) and any("/kokoro/" in n for n in reference)
    assert _tree_bytes(again.root) == reference
    other_bytes = _tree_bytes(other.root)
    wavs = [name for name in reference if name.endswith(".wav")]
    assert all(other_bytes[name] != reference[name] for name in wavs)


def test_speech_region_is_louder_than_noise(tiny: demo_data.DemoDataset) -> None:
    for clip in _clips(tiny):
        audio, _ = soundfile.read(tiny.root / clip["wav"])
        onset, offset = int(clip["onset"]), int(clip["offset"])
        noise = audio[:onset]  # after the word, its room's echoes
        speech_rms = np.sqrt(np.mean(audio[onset:offset] ** 2))
        assert speech_rms > 1e-3, clip
        if noise.size >= 1600:
            assert speech_rms > 1.4 * np.sqrt(np.mean(noise**2)), clip


def _fingerprint(audio: np.ndarray, frames: int = 24) -> np.ndarray:
    """Unit-norm log spectrogram resampled to a fixed number of frames."""
    _, _, z = stft(audio, 16_000, nperseg=400, noverlap=240)
    spec = np.log(np.abs(z) + 1e-3)
    t = np.linspace(0, spec.shape[1] - 1, frames)
    spec = np.stack([np.interp(t, np.arange(spec.shape[1]), row) for row in spec]).ravel()
    spec -= spec.mean()
    return spec / np.linalg.norm(spec)


@pytest.mark.parametrize("voice", ["en-us", "en+whisper", "en-gb-x-rp+f3"])
def test_different_words_sound_different(voice: str) -> None:
    """Each word, said again slower and lower, is nearer itself than any other word is to it."""
    first = {w: _fingerprint(espeak_ng.synthesize_espeak(w, voice)) for w in demo_data.KEYWORDS}
    second = {w: _fingerprint(espeak_ng.synthesize_espeak(w, voice, rate=140, pitch=35, seed=1))
              for w in demo_data.KEYWORDS}
    same_word = min(float(first[w] @ second[w]) for w in demo_data.KEYWORDS)
    cross_word = max(
        float(first[a] @ second[b]) for a in demo_data.KEYWORDS for b in demo_data.KEYWORDS if a != b
    )
    assert cross_word < same_word


def test_cache_is_reused_and_other_recipes_live_beside_it(tmp_path: Path) -> None:
    kwargs = dict(clips_per_word=1, valid_clips_per_word=0, eval_clips_per_word=1, synth_clips_per_word=0,
                  words=("yes", "no"), recipe=demo_data.Recipe(synthesizers=("espeak",), rooms=(1, 0, 0)))
    first = demo_data.generate_demo_dataset(tmp_path, show_progress=False, **kwargs)
    assert first.valid_json is None and first.num_classes == 2 and first.root.parent == tmp_path
    wav = first.root / _datafile_entries(first.train_json)[0]["wav"]
    stamp, before = wav.stat().st_mtime_ns, _tree_bytes(first.root)
    assert demo_data.generate_demo_dataset(tmp_path, show_progress=False, **kwargs) == first
    assert wav.stat().st_mtime_ns == stamp
    # Another recipe (seed) gets its own folder; the first dataset is untouched and still complete.
    other = demo_data.generate_demo_dataset(tmp_path, seed=3, show_progress=False, **kwargs)
    assert other.root != first.root and json.loads((other.root / "manifest.json").read_text())["seed"] == 3
    assert _tree_bytes(first.root) == before and wav.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.root.name, other.root.name])  # no leftovers.


def test_invalid_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="words"):
        demo_data.generate_demo_dataset(tmp_path, words=("yes", "yes"))
    with pytest.raises(ValueError, match="clip"):
        demo_data.generate_demo_dataset(tmp_path, clips_per_word=0)
    with pytest.raises(ValueError, match="unknown synthesizer 'festival'"):
        demo_data.generate_demo_dataset(tmp_path, recipe=demo_data.Recipe(synthesizers=("espeak", "festival")))
    with pytest.raises(ValueError, match="exclude the held-out synthesizer 'piper'"):
        demo_data.generate_demo_dataset(tmp_path, recipe=demo_data.Recipe(synthesizers=("espeak", "piper")))
    with pytest.raises(ValueError, match="'espeak' has no voices for the synth split"):
        demo_data.generate_demo_dataset(tmp_path, recipe=demo_data.Recipe(synthesizers=("kokoro",),
                                                                          heldout_synthesizer="espeak"))
    with pytest.raises(ValueError, match="backgrounds"):
        demo_data.generate_demo_dataset(tmp_path, recipe=demo_data.Recipe(backgrounds=("rain",)))
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUM_JAX_CACHE", str(tmp_path))
    assert demo_data.default_cache_dir() == tmp_path / "demo"
    monkeypatch.delenv("AUM_JAX_CACHE")
    assert demo_data.default_cache_dir() == Path.home() / ".cache" / "aum_jax" / "demo"


def test_missing_library_error_names_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import espeakng_loader

    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak-ng.so")
    with pytest.raises(RuntimeError, match="/nonexistent/libespeak-ng.so"):
        espeak.Espeak()


def test_the_held_out_synthesizer_is_heard_in_the_default_acoustics_whatever_the_recipe(
        plain: demo_data.DemoDataset) -> None:
    clips = _clips(plain)
    trained = [c for c in clips if c["split"] != "synth"]
    assert len(trained) == 3 * (2 + 2)
    assert all(not c["room"] and not c["microphone"] and c["background"] == "coloured" and c["speed"] == "1.000"
               for c in trained)
    synth = [c for c in clips if c["split"] == "synth"]
    assert len(synth) == 24 and {c["synthesizer"] for c in synth} == {"piper"}
    assert {c["background"] for c in synth} == set(demo_data.Recipe.backgrounds)
    assert any(c["room"].startswith("rooms/synth/") for c in synth) and any(c["microphone"] for c in synth)
    assert len({c["speed"] for c in synth}) > 1
    assert len(list((plain.root / "rooms" / "synth").iterdir())) == demo_data.SYNTH_ROOMS


def test_the_held_out_synthesizers_bytes_do_not_depend_on_the_training_voices(
        small: demo_data.DemoDataset, plain: demo_data.DemoDataset) -> None:
    synth = [name for name in _tree_bytes(small.root) if "/synth/" in name or name == "synth.json"]
    assert len(synth) > 10 and {n: (small.root / n).read_bytes() for n in synth} == {
        n: (plain.root / n).read_bytes() for n in synth}
    assert len([n for n in synth if n.startswith("utterances/synth/piper/")]) == 3 * 3
