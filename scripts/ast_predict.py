"""What a transformers user runs to score audio files with an Audio Spectrogram Transformer: the peer of
``python -m aum_jax.predict`` in ``scripts/benchmark.py --sections peers``.

  python scripts/ast_predict.py --model-dir AST_DIR --audio a.wav b.wav

``AST_DIR`` holds an ``ASTForAudioClassification`` and its ``ASTFeatureExtractor`` saved with
``save_pretrained``. The files (16 kHz mono) become the extractor's Kaldi fbank, one batch runs through
the model in eval mode under ``torch.inference_mode()`` (SDPA attention), and each file's top 5 classes
are printed with their sigmoid scores, as predict prints a BCE model's.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="save_pretrained folder of the model and its extractor")
    parser.add_argument("--audio", nargs="+", required=True, help="16 kHz audio files")
    args = parser.parse_args()

    import soundfile
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    extractor = ASTFeatureExtractor.from_pretrained(args.model_dir)
    model = ASTForAudioClassification.from_pretrained(args.model_dir, attn_implementation="sdpa").eval()
    waves = [soundfile.read(path, dtype="float32")[0] for path in args.audio]
    inputs = extractor(waves, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    with torch.inference_mode():
        scores = torch.sigmoid(model(**inputs).logits)
    for path, row in zip(args.audio, scores):
        top = torch.topk(row, 5)
        print(f"{path}: " + ", ".join(f"{model.config.id2label[int(i)]} {float(v):.3f}"
                                      for v, i in zip(top.values, top.indices)))


if __name__ == "__main__":
    main()
