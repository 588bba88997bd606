"""A minimal ctypes binding of eSpeak NG (the ``espeakng-loader`` wheel's library), synchronous mode.

eSpeak NG keeps internal state (e.g. pitch flutter phase) across utterances in one
process; :mod:`aum_jax.data.demo.demo_data` renders each shard of clips in a fresh process so that
the bytes are the same every time.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

# eSpeak NG C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class Espeak:
    """Minimal ctypes binding of libespeak-ng in synchronous mode."""

    def __init__(self) -> None:
        import espeakng_loader

        lib_path = espeakng_loader.get_library_path()
        try:
            self._lib = ctypes.CDLL(lib_path)
        except OSError as err:
            raise RuntimeError(f"cannot load libespeak-ng from {lib_path}: {err}") from err
        self._declare_signatures()
        data_path = espeakng_loader.get_data_path()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise RuntimeError(
                f"espeak_Initialize failed (library {lib_path}, data {data_path})"
            )
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []
        # eSpeak NG seeds its noise generator from time(); the speech-player
        # backend (klatt 6 variants) uses libc rand(). Both are reseeded per call.
        self._libc = ctypes.CDLL(None)
        self._callback = _SYNTH_CALLBACK(self._collect)  # keep a reference alive
        self._lib.espeak_SetSynthCallback(self._callback)

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], num_samples: int, _events: int | None) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0  # 0 = continue synthesis

    def _check(self, status: int, what: str) -> None:
        if status != _EE_OK:
            raise RuntimeError(f"eSpeak NG {what} failed with status {status}")

    def phonemes(self, text: str, voice: str) -> str:
        """``text`` as IPA phonemes in ``voice``'s language (``"en-us"``), its clauses joined by spaces."""
        self._check(self._lib.espeak_SetVoiceByName(voice.encode()), f"SetVoiceByName({voice!r})")
        buffer = ctypes.create_string_buffer(text.encode() + b"\0")
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))  # eSpeak advances it clause by clause, NULL at the end.
        clauses = []
        while pointer.value:
            clauses.append(self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA).decode())
        return " ".join(filter(None, clauses))

    def synthesize(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """Returns int16 samples at ``self.sample_rate``."""
        self._check(self._lib.espeak_ng_SetRandSeed(seed), "SetRandSeed")
        self._libc.srand(seed)
        self._check(self._lib.espeak_SetVoiceByName(voice.encode()), f"SetVoiceByName({voice!r})")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
            self._check(self._lib.espeak_SetParameter(param, value, 0), f"SetParameter({param})")
        data = text.encode() + b"\0"
        self._chunks = []
        self._check(
            self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None),
            f"Synth({text!r})",
        )
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


@functools.cache
def engine() -> Espeak:
    """The process's one eSpeak NG engine (it keeps state between utterances)."""
    return Espeak()
