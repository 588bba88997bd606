"""eSpeak NG (the ``espeakng-loader`` wheel, GPL-3.0): rule-based formant synthesis, 8 English accents times 49
voice variants, the variants disjoint between splits; each clip its own rate and pitch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from aum_jax.data.demo import espeak
from aum_jax.data.demo.voices.base import Synthesizer, resample, trim

# eSpeak NG: English accents times voice variants, the variants disjoint between splits (held-out voices).
ACCENTS: tuple[str, ...] = (
    "en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
VARIANTS: dict[str, tuple[str, ...]] = {
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
RATE_WPM = (120, 220)
PITCH = (25, 75)
PITCH_RANGE = (20, 80)


class Espeak(Synthesizer):
    name = "espeak"
    voices: ClassVar[dict[str, tuple[str, ...]]] = {split: tuple(accent + (f"+{variant}" if variant else "") for variant in variants
                           for accent in ACCENTS) for split, variants in VARIANTS.items()}
    banked = False

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        voice = voices[rng.integers(len(voices))]
        rate, pitch, pitch_range = (int(rng.integers(lo, hi + 1))
                                    for lo, hi in (RATE_WPM, PITCH, PITCH_RANGE))
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
    return trim(resample(raw, engine.sample_rate))
