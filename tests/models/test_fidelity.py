"""Golden outputs of the ORIGINAL PyTorch AuM (tests/fixtures, see its README) are reproduced
after conversion, within 1e-4, under every selective-scan implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flax import nnx

from aum_jax.checkpoints import convert, pretrained
from aum_jax.ops import SCAN_IMPLS

TOL = 1e-4


@pytest.fixture(scope="module")
def converted(fixtures_dir):
    models = {}
    for name in ("tiny_fobi", "tiny_bibi"):
        folder = fixtures_dir / "aum_torch" / name
        state = convert.read_torch_checkpoint(folder / "state_dict.pth")
        models[name] = (convert.infer_config(state), state, folder)
    return models


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("name", ["tiny_fobi", "tiny_bibi"])
def test_logits_and_features_match_the_original(converted, name, impl):
    config, state, folder = converted[name]
    meta = json.loads((folder / "config.json").read_text())
    assert (config.aum_type, config.depth, config.num_classes, config.audio_length) == (
        meta["aum_type"], meta["depth"], meta["n_class"], meta["audio_length"],
    )
    model = convert.convert(state, config.replace(scan_impl=impl, scan_chunk_size=16))
    model.eval()
    x = np.load(folder / "input.npy")
    logits = np.asarray(model(x))
    features = np.asarray(model.outputs(x)["features"])
    np.testing.assert_allclose(logits, np.load(folder / "logits.npy"), atol=TOL, rtol=0)
    np.testing.assert_allclose(features, np.load(folder / "features.npy"), atol=TOL, rtol=0)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_vim_imagenet_init_matches_the_original(fixtures_dir, impl):
    folder = fixtures_dir / "vim_imagenet_init"
    meta = json.loads((folder / "config.json").read_text())
    state = convert.read_torch_checkpoint(folder / meta["source"])
    target = convert.infer_config(
        state, audio_length=meta["audio_length"], strides=tuple(meta["strides"]), num_mel_bins=meta["melbins"]
    ).replace(bimamba_type=pretrained.target_variant(meta["aum_type"]), num_classes=meta["n_class"], scan_impl=impl)
    model = pretrained.init_from_source(state, target, pretrained.SourceLayout(kind=pretrained.detect_source_kind(state)))
    params = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(params["pos_embed"][...], np.load(folder / "pos_embed_after_init.npy"), atol=TOL, rtol=0)
    kernel = np.asarray(params["patch_embed"]["proj"]["kernel"][...]).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(kernel, np.load(folder / "patch_embed_weight_after_init.npy"), atol=TOL, rtol=0)
    model.eval()
    features = np.asarray(model.outputs(np.load(folder / "input.npy"))["features"])
    np.testing.assert_allclose(features, np.load(folder / "features.npy"), atol=TOL, rtol=0)


@pytest.mark.parametrize("wrap", ["module_prefix", "model_key", "state_dict_key"])
def test_wrapped_checkpoints_convert_identically(converted, tmp_path, wrap):
    config, state, folder = converted["tiny_bibi"]
    raw = torch.load(folder / "state_dict.pth", map_location="cpu", weights_only=True)
    wrapped = {
        "module_prefix": {f"module.{k}": v for k, v in raw.items()},
        "model_key": {"model": raw},
        "state_dict_key": {"state_dict": raw, "epoch": 3},
    }[wrap]
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped, path)
    reread = convert.read_torch_checkpoint(path)
    assert reread.keys() == state.keys()
    for key in state:
        np.testing.assert_array_equal(reread[key], state[key])
