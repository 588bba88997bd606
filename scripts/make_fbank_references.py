"""Makes the torchaudio reference fbanks in tests/fixtures/fbank/ (run once, by hand).

The tests in tests/test_audio.py compare ``aum_jax.data.features.kaldi`` (the fbank) with these arrays and never
need torch. This script is the recipe they were made with; it is not run by the tests.

How it is run (x86_64, CPU only):

    python -m venv /tmp/ta-venv            # throwaway venv OUTSIDE the repository
    /tmp/ta-venv/bin/pip install torch==2.9.1
    /tmp/ta-venv/bin/pip install torch==2.9.1 'torchaudio==2.9.*' numpy soundfile
    # -> torch 2.9.1+cu128 (run on the CPU), torchaudio 2.9.1, numpy 2.4.6,
    #    soundfile 0.14.0 (libsndfile 1.2.2)
    cd REPOSITORY && /tmp/ta-venv/bin/python scripts/make_fbank_references.py

(The install pulls PyPI's CUDA build of torch 2.9.1, about 7 GB in the venv; only its CPU
path is used.) The script reads tests/fixtures/audio/ and the golden
tests/fixtures/fbank/sample{0,1,2}_fbank128.npy (copies of /work/shared/fixtures).
Re-running it rewrites the same arrays; only the 32-bit float wav differs in bytes (its
PEAK chunk holds a timestamp), not in samples.

With that environment, the fbank recipe below reproduces the shared golden fixtures
``sample{0,1,2}_fbank128.npy`` bit for bit (the script checks this and stops if not).

Recipe for each case (what the original ``AudiosetDataset._wav2fbank`` does before
padding/cutting/normalisation, except that audio is read with soundfile instead of
``torchaudio.load``; both give float32 PCM / 32768 for 16-bit files):

    data, sr = soundfile.read(wav, dtype='float32', always_2d=True)
    waveform = torch.from_numpy(data.T.copy())          # (channels, samples)
    waveform = waveform - waveform.mean()               # over all channels
    torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=sr, use_energy=False,
        window_type='hanning', num_mel_bins=BINS, dither=0.0, frame_shift=SHIFT)

Cases of kind ``raw`` skip the file and the mean removal: the float32 array in
``<name>_input.npy`` is passed straight to ``kaldi.fbank`` (tests ``kaldi_fbank``).
torch runs with one thread so its float32 sums have a fixed order.

Inputs are deterministic: seeded synthetic signals (chirps, tones, noise, a stretch of
digital silence) and short cuts of the shipped sample wavs, some resampled with
``torchaudio.functional.resample``. All inputs and outputs are written to
tests/fixtures/fbank/ together with ``cases.json`` describing them. ``torch_sums.npz``
holds float32 ``torch.sum`` results (overlapping rows of ``sample0 * 0.7071 + 0.0123``
of several lengths, and whole-clip sums of the five sample wavs) to check the emulation
of torch's summation order.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torchaudio.compliance import kaldi

ROOT = pathlib.Path(__file__).resolve().parents[1]
AUDIO = ROOT / "tests" / "fixtures" / "audio"
OUT = ROOT / "tests" / "fixtures" / "fbank"


def fbank(waveform: torch.Tensor, sr: int, bins: int, shift: float) -> np.ndarray:
    return kaldi.fbank(
        waveform,
        htk_compat=True,
        sample_frequency=sr,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=bins,
        dither=0.0,
        frame_shift=shift,
    ).numpy()


def wav2fbank(path: pathlib.Path, bins: int, shift: float) -> np.ndarray:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    waveform = torch.from_numpy(np.ascontiguousarray(data.T))
    waveform = waveform - waveform.mean()
    return fbank(waveform, sr, bins, shift)


def synth(sr: int, seconds: float, seed: int, silence: tuple[float, float] | None = None):
    """Chirp + tones + AM + noise, float64 in about [-0.8, 0.8]."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    f0, f1 = 60.0, 0.45 * sr
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    sig = 0.3 * np.sin(phase)
    for f, a in ((220.0, 0.1), (0.21 * sr, 0.05), (0.37 * sr, 0.02)):
        sig += a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    sig *= 1.0 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    sig += 0.01 * rng.standard_normal(n)
    if silence is not None:
        a, b = int(silence[0] * sr), int(silence[1] * sr)
        sig[a:b] = 0.0
    return sig


def cut(
    name: str, start: float, seconds: float, new_sr: int | None = None
) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(AUDIO / name), dtype="float32", always_2d=True)
    seg = data[int(start * sr) : int((start + seconds) * sr), 0]
    if new_sr is not None and new_sr != sr:
        seg = torchaudio.functional.resample(torch.from_numpy(seg.copy()), sr, new_sr).numpy()
        sr = new_sr
    return seg.astype(np.float64), sr


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    # 0) The recipe must reproduce the shared golden fixtures exactly.
    for k in range(3):
        ref = np.load(OUT / f"sample{k}_fbank128.npy")
        got = wav2fbank(AUDIO / f"sample{k}.wav", 128, 10.0)
        if got.shape != ref.shape or np.abs(got - ref).max() != 0.0:
            sys.exit(f"recipe does not reproduce sample{k}_fbank128.npy; not writing anything")

    cases = []

    def add_wav(name, signal, sr, bins, shift, subtype="PCM_16", note=""):
        signal = np.asarray(signal)
        if signal.ndim == 1:
            signal = signal[:, None]
        wav = OUT / f"{name}.wav"
        sf.write(str(wav), np.clip(signal, -1.0, 0.99996), sr, subtype=subtype)
        ref = wav2fbank(wav, bins, shift)
        np.save(OUT / f"{name}_ref.npy", ref)
        cases.append(dict(name=name, kind="wav", input=wav.name, reference=f"{name}_ref.npy",
                          sample_rate=sr, num_mel_bins=bins, frame_shift_ms=shift,
                          shape=list(ref.shape), note=note))

    def add_raw(name, signal, sr, bins, shift, note=""):
        x = np.asarray(signal, np.float32)
        np.save(OUT / f"{name}_input.npy", x)
        ref = fbank(torch.from_numpy(x if x.ndim == 2 else x[None]), sr, bins, shift)
        np.save(OUT / f"{name}_ref.npy", ref)
        cases.append(dict(name=name, kind="raw", input=f"{name}_input.npy",
                          reference=f"{name}_ref.npy", sample_rate=sr, num_mel_bins=bins,
                          frame_shift_ms=shift, shape=list(ref.shape), note=note))

    add_wav("synth_sr8000_bins23", synth(8000, 1.0, 1, silence=(0.3, 0.45)), 8000, 23, 10.0,
            note="8 kHz, 23 bins, digital silence in the middle (log floor)")
    add_wav("synth_sr8000_bins128", synth(8000, 0.5, 10), 8000, 128, 10.0,
            note="8 kHz with 128 bins: some filters fall between FFT bins (stay at the floor)")
    add_wav("synth_sr22050_bins64", synth(22050, 0.6, 2), 22050, 64, 10.0,
            note="22.05 kHz: 551-sample window, 220-sample shift (truncated 220.5)")
    add_wav("synth_sr44100_bins80", synth(44100, 0.4, 3), 44100, 80, 10.0,
            note="44.1 kHz, 80 bins")
    add_wav("synth_sr48000_bins128_float", synth(48000, 0.3, 4), 48000, 128, 10.0,
            subtype="FLOAT", note="48 kHz, 32-bit float wav")
    stereo = np.stack([synth(16000, 0.5, 5), 0.5 * synth(16000, 0.5, 6)[::-1] + 0.2], axis=1)
    add_wav("synth_stereo_sr16000", stereo, 16000, 128, 10.0,
            note="2 channels; channel 1 is different and offset by +0.2, so the mean is "
                 "over both channels and only channel 0 is used")
    add_wav("synth_short_sr16000", synth(16000, 410 / 16000, 7), 16000, 128, 10.0,
            note="410 samples: just over one 25 ms frame")
    add_wav("synth_shift25_sr16000_bins40", synth(16000, 0.8, 8), 16000, 40, 25.0,
            note="frame shift 25 ms")
    seg, sr = cut("sample3.wav", 2.0, 1.0)
    add_wav("sample3_cut_bins80_shift12p5", seg, sr, 80, 12.5,
            note="real audio, 1 s of sample3.wav, 80 bins, shift 12.5 ms")
    seg, sr = cut("sample4.wav", 4.0, 0.5, new_sr=44100)
    add_wav("sample4_cut_sr44100_bins128", seg, sr, 128, 10.0,
            note="real audio, 0.5 s of sample4.wav resampled to 44.1 kHz")
    seg, sr = cut("sample4.wav", 6.0, 1.0, new_sr=8000)
    add_wav("sample4_cut_sr8000_bins64", seg, sr, 64, 5.0,
            note="real audio, 1 s of sample4.wav resampled to 8 kHz, shift 5 ms")
    add_raw("raw_dc_sr16000_bins128", (synth(16000, 0.4, 9) * 0.5 + 0.25).astype(np.float32),
            16000, 128, 10.0, note="kaldi_fbank on a raw array with a DC offset, no mean removal")

    # float32 row sums exactly as torch orders them (checks aum_jax.data.features.audio's emulation
    # of that order); the rows are overlapping frames of sample0.wav, as Kaldi frames.
    data, _ = sf.read(str(AUDIO / "sample0.wav"), dtype="float32", always_2d=True)
    # Scaled and offset in float32 so that the sums actually round.
    x = torch.from_numpy(np.ascontiguousarray(data[:, 0])) * 0.7071 + 0.0123
    sums = {}
    for length in (8, 100, 200, 400, 551, 1102, 1200, 2048, 5000):
        rows = x.as_strided((1 + (x.numel() - length) // 997, length), (997, 1))
        sums[f"rows_{length}"] = torch.sum(rows, dim=1).numpy()
    sums["total_scaled"] = x.sum().numpy()  # 160,000 items: several cascade levels
    for k in range(5):
        d, _ = sf.read(str(AUDIO / f"sample{k}.wav"), dtype="float32", always_2d=True)
        sums[f"total_sample{k}"] = torch.from_numpy(np.ascontiguousarray(d.T)).sum().numpy()
    np.savez(OUT / "torch_sums.npz", **sums)

    (OUT / "cases.json").write_text(json.dumps(dict(
        generator="scripts/make_fbank_references.py",
        torch=torch.__version__, torchaudio=torchaudio.__version__, numpy=np.__version__,
        soundfile=sf.__version__, cases=cases), indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(cases)} cases; tests/fixtures/fbank is {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
