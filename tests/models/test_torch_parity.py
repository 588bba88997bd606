"""Options the golden fixtures do not cover, checked against a PyTorch model of the original
forward pass (tests/torch_reference.py) on random weights loaded through the converter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aum_jax.checkpoints import convert, pretrained
from aum_jax.models import AuMConfig, init_model
from tests import torch_reference

TINY = dict(embed_dim=48, depth=3, num_classes=5, audio_length=64, num_mel_bins=48)


def random_state_dict(config: AuMConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the original's key layout, perturbed around its initial values."""
    gen = torch.Generator().manual_seed(seed)
    shapes = convert.expected_torch_shapes(init_model(config))
    sd = {}
    for key, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        if key.endswith(("A_log", "A_b_log")):
            sd[key] = torch.log(torch.arange(1, shape[1] + 1, dtype=torch.float32)).expand(shape) + 0.1 * noise
        elif key.endswith((".D", ".D_b", "norm.weight", "norm_f.weight")):
            sd[key] = 1 + 0.1 * noise
        elif key.endswith("dt_proj.bias") or key.endswith("dt_proj_b.bias"):
            sd[key] = -4 + noise
        else:
            sd[key] = 0.2 * noise
    return sd


def jax_outputs(config, sd, x):
    model = convert.convert({k: v.numpy() for k, v in sd.items()}, config)
    model.eval()
    return np.asarray(model(x.numpy())), np.asarray(model.outputs(x.numpy())["features"])


CASES = {
    "Fo-Fo": dict(bimamba_type="none"),
    "Fo-Bi": dict(bimamba_type="v1"),
    "Bi-Bi": dict(bimamba_type="v2"),
    "Bi-Bi summed": dict(bimamba_type="v2", if_devide_out=False),
    "cls head": dict(cls_position="head"),
    "cls end": dict(cls_position="end"),
    "cls double": dict(cls_position="double", bimamba_type="v2"),
    "no cls, mean pool": dict(cls_position="none", pool="mean"),
    "no cls, last token": dict(cls_position="none", pool="last"),
    "no cls, max over tokens": dict(cls_position="none", pool="max"),
    "transposed tokens": dict(transpose_token_sequence=True),
    "transposed, double cls": dict(transpose_token_sequence=True, cls_position="double"),
    "overlapping strides 10": dict(strides=(10, 10), audio_length=70),
    "frequency and time strides differ": dict(strides=(16, 8), audio_length=56),
    "d_state 8, expand 3": dict(d_state=8, expand=3, dt_rank=5),
    "projection biases, no conv bias": dict(proj_bias=True, conv_bias=False, bimamba_type="v2"),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_reference(case):
    config = AuMConfig(**{**TINY, **CASES[case]})
    sd = random_state_dict(config)
    x = torch.randn(2, config.audio_length, config.num_mel_bins, generator=torch.Generator().manual_seed(1))
    logits, feats = jax_outputs(config, sd, x)
    np.testing.assert_allclose(logits, torch_reference.forward(sd, config, x).numpy(), atol=1e-4)
    np.testing.assert_allclose(feats, torch_reference.forward(sd, config, x, True).numpy(), atol=1e-4)


@pytest.mark.parametrize("old, new", [((14, 14), (8, 8)), ((8, 8), (12, 12)), ((8, 64), (12, 101)), ((12, 101), (8, 64)), ((8, 8), (8, 8))])
def test_grid_resampling_matches_torch_antialiased_bilinear(old, new):
    grid = torch.randn(1, 6, *old, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(grid, size=new, mode="bilinear", antialias=True) if old != new else grid
    got = pretrained.resample_grid(grid[0].permute(1, 2, 0).numpy(), new)
    np.testing.assert_allclose(np.asarray(got), expected[0].permute(1, 2, 0).numpy(), atol=1e-5)


@pytest.mark.parametrize("classes, keeps_head", [(5, True), (9, False)])
def test_aum_source_init_resamples_grid_and_handles_head(classes, keeps_head):
    source_cfg = AuMConfig(**{**TINY, "num_mel_bins": 128, "audio_length": 64})  # grid 8 x 4
    sd = random_state_dict(source_cfg, seed=3)
    target = source_cfg.replace(audio_length=100, strides=(10, 10), num_classes=classes)  # grid 12 x 9
    model = pretrained.init_from_source(
        {k: v.numpy() for k, v in sd.items()}, target, pretrained.SourceLayout(kind="aum"), seed=0
    )
    pos = sd["pos_embed.pos_embed"]
    grid = pos[:, 1:].reshape(1, 8, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(12, 9), mode="bilinear", antialias=True).permute(0, 2, 3, 1).reshape(1, 108, -1)
    np.testing.assert_allclose(np.asarray(model.pos_embed[...]), torch.cat([pos[:, :1], resized], 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.layers.mixer.in_proj.kernel[...][1]), sd["layers.1.mixer.in_proj.weight"].T.numpy())
    head = np.asarray(model.head.kernel[...])
    assert head.shape == (48, classes)
    if keeps_head:
        np.testing.assert_array_equal(head, sd["head.weight"].T.numpy())
    else:
        assert abs(head.std() - 0.02) < 0.005  # a fresh head, not a copy


def torch_pi_resize(kernel: torch.Tensor, new: tuple[int, int]) -> torch.Tensor:
    """FlexiViT's PI-resize as the original computes it: pinv of the bilinear resize matrix."""
    old = tuple(kernel.shape[-2:])
    columns = []
    for i in range(old[0] * old[1]):
        basis = torch.zeros(old)
        basis.view(-1)[i] = 1.0
        columns.append(F.interpolate(basis[None, None], size=new, mode="bilinear", antialias=False).reshape(-1))
    resize_matrix = torch.stack(columns).T  # (new_n, old_n), as the original's get_resize_mat
    inverse = torch.linalg.pinv(resize_matrix.T.double())
    flat = kernel.reshape(*kernel.shape[:2], -1).double()
    return torch.einsum("xk,abk->abx", inverse, flat).reshape(*kernel.shape[:2], *new).float()


@pytest.mark.parametrize("new", [(8, 8), (24, 24), (16, 10)])
def test_patch_kernel_pi_resize_matches_the_original_recipe(new):
    kernel = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    got = pretrained.resample_patch_kernel(kernel.numpy(), new)
    np.testing.assert_allclose(got, torch_pi_resize(kernel, new).numpy(), atol=1e-4)


def test_aum_source_init_to_another_patch_size():
    source_cfg = AuMConfig(**{**TINY, "num_mel_bins": 128, "audio_length": 64})
    sd = random_state_dict(source_cfg, seed=4)
    target = source_cfg.replace(patch_size=(8, 8), strides=(8, 8), audio_length=64)
    model = pretrained.init_from_source({k: v.numpy() for k, v in sd.items()}, target, pretrained.SourceLayout(kind="aum"))
    kernel = np.asarray(model.patch_embed.proj.kernel[...]).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(kernel, torch_pi_resize(sd["patch_embed.proj.weight"], (8, 8)).numpy(), atol=1e-4)
    assert model.pos_embed.shape == (1, 1 + 16 * 8, 48)
