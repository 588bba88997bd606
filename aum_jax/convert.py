"""Importing the original PyTorch AuM and ViM checkpoints into AudioMamba.

Two paths:

- ``convert``: a trained AuM ``state_dict`` becomes the same model in NNX. Its config is
  inferred from the tensor shapes, and every key must fit: a missing, unexpected or
  mis-shaped key is an error that names each one.
- ``init_from_source``: a NEW model is built from a source checkpoint, as the original's
  ``imagenet_pretrain`` (ViM ImageNet) and ``aum_pretrain`` (AuM) options do. The position
  embedding grid is resampled, a 3-channel patch kernel is averaged (and PI-resized to
  another patch size), and the head is dropped
  (always for ViM, for AuM when the class count differs) and freshly initialised.

PyTorch is needed only here, to read ``.pth`` files, and only with ``weights_only=True``:
a checkpoint can never run code on load.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import re
import zipfile
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx, traverse_util

from aum_jax import model_files
from aum_jax.models import AUM_TYPES, AudioMamba, AuMConfig, init_model

StateDict = dict[str, np.ndarray]

POS_EMBED_KEY = "pos_embed.pos_embed"  # AuM stores it inside a FlexiPosEmbed module
VIM_POS_EMBED_KEY = "pos_embed"  # ViM stores it as a bare parameter
PATCH_KEY = "patch_embed.proj.weight"
HEAD_KEYS = ("head.weight", "head.bias")
# The original infers a checkpoint's frame count by trying powers of two with 128 mel bins.
SEARCH_LOG2_AUDIO_LENGTHS = range(6, 20)
SEARCH_NUM_MEL_BINS = 128


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


# ----------------------------------------------------------------------------------------
# Reading .pth files
# ----------------------------------------------------------------------------------------


def read_torch_checkpoint(path: str | os.PathLike) -> StateDict:
    """Reads a ``.pth`` file into a flat ``{key: float32 array}`` dict.

    Accepts a plain ``state_dict``, keys prefixed with ``module.`` (DataParallel,
    Accelerate), and a ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper.
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("Reading PyTorch checkpoints needs torch: pip install 'aum-jax[torch]'.") from e
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).")
    try:
        # Training scripts often save their argparse Namespace beside the weights; it holds data only.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Refusing to load {path}: it needs arbitrary pickled objects, which could run code. "
            f"Only tensor state_dicts are accepted (torch.load(weights_only=True) said: {e})."
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, zipfile errors, ... for junk.
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {type(e).__name__}: {e}") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors.")
    state: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        state[key.removeprefix("module.")] = value.detach().to(torch.float32).numpy()
    return state


def _looks_like_torch_file(path: str) -> bool:
    """True for torch's zip format and for the legacy pickle format (protocol-2+ magic byte)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


# ----------------------------------------------------------------------------------------
# Inferring the config from tensor shapes
# ----------------------------------------------------------------------------------------


def _require(state: StateDict, key: str) -> np.ndarray:
    if key not in state:
        raise CheckpointError(f"Checkpoint has no {key!r}; it is not an AuM/ViM state_dict.")
    return state[key]


def _depth(state: StateDict) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError("Checkpoint has no 'layers.N.*' keys; it is not an AuM/ViM state_dict.")
    return max(indices) + 1


def _variant(state: StateDict) -> str:
    if "layers.0.mixer.conv1d_b.weight" in state:
        return "v2"
    return "v1" if "layers.0.mixer.A_b_log" in state else "none"


def _cls_tokens(state: StateDict) -> int:
    if "cls_token_head" in state:
        return 2
    return 1 if "cls_token" in state else 0


def infer_audio_length(
    num_positions: int, patch_size: tuple[int, int], strides: tuple[int, int], num_mel_bins: int = SEARCH_NUM_MEL_BINS
) -> int:
    """The smallest power-of-two frame count whose patch grid has ``num_positions`` patches."""
    for log2 in SEARCH_LOG2_AUDIO_LENGTHS:
        probe = AuMConfig(num_mel_bins=num_mel_bins, audio_length=2**log2, patch_size=patch_size, strides=strides)
        if probe.num_patches == num_positions:
            return 2**log2
    raise CheckpointError(
        f"No power-of-two audio length gives {num_positions} patches with patch {patch_size}, strides "
        f"{strides} and {num_mel_bins} mel bins; pass the audio length explicitly."
    )


def infer_config(
    state: StateDict,
    *,
    strides: tuple[int, int] | None = None,
    audio_length: int | None = None,
    num_mel_bins: int = SEARCH_NUM_MEL_BINS,
    cls_position: str | None = None,
) -> AuMConfig:
    """Reads embed dim, depth, variant, classes, patch size and SSM sizes off the tensor shapes.

    Strides default to the patch size; the frame count is inferred from the position
    embedding's length as the original does, unless given.
    """
    patch = _require(state, PATCH_KEY)
    embed_dim, patch_size = patch.shape[0], tuple(int(s) for s in patch.shape[-2:])
    strides = tuple(strides) if strides else patch_size
    n_cls = _cls_tokens(state)
    pos = _require(state, POS_EMBED_KEY if POS_EMBED_KEY in state else VIM_POS_EMBED_KEY)
    if audio_length is None:
        audio_length = infer_audio_length(pos.shape[1] - n_cls, patch_size, strides, num_mel_bins)
    if cls_position is None:
        cls_position = {0: "none", 1: "middle", 2: "double"}[n_cls]
    a_log = _require(state, "layers.0.mixer.A_log")
    in_proj = _require(state, "layers.0.mixer.in_proj.weight")
    return AuMConfig(
        num_mel_bins=num_mel_bins,
        audio_length=audio_length,
        patch_size=patch_size,
        strides=strides,
        embed_dim=int(embed_dim),
        depth=_depth(state),
        num_classes=int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
        bimamba_type=_variant(state),
        d_state=int(a_log.shape[1]),
        d_conv=int(_require(state, "layers.0.mixer.conv1d.weight").shape[-1]),
        expand=int(in_proj.shape[0] // 2 // embed_dim),
        dt_rank=int(_require(state, "layers.0.mixer.dt_proj.weight").shape[1]),
        conv_bias="layers.0.mixer.conv1d.bias" in state,
        proj_bias="layers.0.mixer.in_proj.bias" in state,
        cls_position=cls_position,
    )


# ----------------------------------------------------------------------------------------
# Name and layout mapping between the PyTorch and NNX parameter trees
# ----------------------------------------------------------------------------------------


def _torch_name(path: tuple[str, ...]) -> str:
    """NNX path (without the layer axis) -> PyTorch key."""
    if path == ("pos_embed",):
        return POS_EMBED_KEY
    *parents, leaf = path
    return ".".join([*parents, "weight" if leaf == "kernel" else leaf])


def _to_torch_layout(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a tensor whose NNX shape is ``shape``."""
    if name == PATCH_KEY:
        ph, pw, c, d = shape
        return d, c, ph, pw
    if re.search(r"conv1d(_b)?\.weight$", name):
        width, channels = shape
        return channels, 1, width
    return tuple(reversed(shape)) if name.endswith(".weight") and len(shape) == 2 else shape


def _to_nnx_layout(name: str, value: np.ndarray) -> np.ndarray:
    if name == PATCH_KEY:
        return value.transpose(2, 3, 1, 0)
    if re.search(r"conv1d(_b)?\.weight$", name):
        return value[:, 0, :].T
    return value.T if name.endswith(".weight") and value.ndim == 2 else value


def _from_nnx_layout(name: str, value: np.ndarray) -> np.ndarray:
    """The inverse of ``_to_nnx_layout``."""
    if name == PATCH_KEY:
        return value.transpose(3, 2, 0, 1)
    if re.search(r"conv1d(_b)?\.weight$", name):
        return value.T[:, None, :]
    return value.T if name.endswith(".weight") and value.ndim == 2 else value


def torch_state_dict(model: AudioMamba) -> StateDict:
    """The PyTorch ``state_dict`` of the original model equal to ``model`` (NumPy arrays)."""
    state = {}
    for path, value in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items():
        value = np.asarray(value)
        if path[0] == "layers":
            name = _torch_name(path[1:])
            for i in range(value.shape[0]):
                state[f"layers.{i}.{name}"] = _from_nnx_layout(name, value[i])
        else:
            name = _torch_name(path)
            state[name] = _from_nnx_layout(name, value)
    return state


def expected_torch_shapes(model: AudioMamba) -> dict[str, tuple[int, ...]]:
    """Every PyTorch key the original model of ``model.config`` has, with its shape."""
    shapes = {}
    for path, value in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items():
        if path[0] == "layers":
            name = _torch_name(path[1:])
            for i in range(value.shape[0]):
                shapes[f"layers.{i}.{name}"] = _to_torch_layout(name, tuple(value.shape[1:]))
        else:
            name = _torch_name(path)
            shapes[name] = _to_torch_layout(name, tuple(value.shape))
    return shapes


def check_keys(state: StateDict, expected: Mapping[str, tuple[int, ...]], *, source: str = "checkpoint") -> None:
    """Raises ``CheckpointError`` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state), key=_natural)
    unexpected = sorted(set(state) - set(expected), key=_natural)
    misshaped = sorted(
        (k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k])), key=_natural
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [f"The {source} does not fit the model:"]
    lines += [f"  missing key {k} (expected shape {tuple(expected[k])})" for k in missing]
    lines += [f"  unexpected key {k} (shape {tuple(state[k].shape)})" for k in unexpected]
    lines += [
        f"  mis-shaped key {k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k])}" for k in misshaped
    ]
    raise CheckpointError("\n".join(lines))


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def load_torch_params(
    model: AudioMamba,
    state: StateDict,
    *,
    source: str = "checkpoint",
    keep_init: Collection[str] = (),
) -> None:
    """Copies a PyTorch ``state_dict`` into ``model`` in place, after a strict key check.

    Keys in ``keep_init`` may be absent from ``state``; those parameters keep the values
    ``model`` was initialised with.
    """
    expected = expected_torch_shapes(model)
    check_keys(state, {k: v for k, v in expected.items() if k not in keep_init or k in state}, source=source)
    params = nnx.state(model, nnx.Param)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(params))
    for path, value in flat.items():
        layered = path[0] == "layers"
        name = _torch_name(path[1:] if layered else path)
        keys = [f"layers.{i}.{name}" for i in range(value.shape[0])] if layered else [name]
        if all(k in keep_init and k not in state for k in keys):
            continue
        arrays = [_to_nnx_layout(name, state[k]) for k in keys]
        flat[path] = jnp.asarray(np.stack(arrays) if layered else arrays[0], value.dtype)
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(flat))
    nnx.update(model, params)


def convert(state: StateDict, config: AuMConfig | None = None, **infer_kwargs) -> AudioMamba:
    """Builds the NNX twin of a trained AuM ``state_dict``."""
    config = config or infer_config(state, **infer_kwargs)
    model = init_model(config)
    load_torch_params(model, state)
    return model


# ----------------------------------------------------------------------------------------
# Initialising a new model from a ViM ImageNet or AuM checkpoint
# ----------------------------------------------------------------------------------------


def resample_grid(grid: jax.Array, new_size: tuple[int, int]) -> jax.Array:
    """Bilinear resize with antialiasing of (H, W, D) to (H', W', D).

    Matches ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``.
    """
    if tuple(grid.shape[:2]) == tuple(new_size):
        return grid
    return jax.image.resize(grid, (*new_size, grid.shape[-1]), method="linear", antialias=True)


def resample_patch_kernel(kernel: np.ndarray, new_size: tuple[int, int]) -> np.ndarray:
    """Resizes a patch-embedding kernel (D, C, h, w) -> (D, C, h', w') as FlexiViT's PI-resize.

    The original's ``resample_patch_embed``: with ``R`` the bilinear resize (no antialiasing)
    from (h, w) to (h', w') as a matrix, the new kernel is ``pinv(R^T) @ kernel``, so that a
    resized patch seen by the new kernel gives what the old patch gave the old kernel.
    """
    old_size = tuple(kernel.shape[-2:])
    if old_size == tuple(new_size):
        return kernel
    old_n = old_size[0] * old_size[1]
    basis = jnp.eye(old_n, dtype=jnp.float32).reshape(old_n, *old_size)
    resized = jax.vmap(lambda e: jax.image.resize(e, new_size, method="linear", antialias=False))(basis)
    resize_matrix = np.asarray(resized, np.float64).reshape(old_n, -1).T  # (new_n, old_n)
    inverse = np.linalg.pinv(resize_matrix.T)  # (new_n, old_n)
    flat = kernel.reshape(*kernel.shape[:2], old_n).astype(np.float64)
    return np.einsum("xk,abk->abx", inverse, flat).reshape(*kernel.shape[:2], *new_size).astype(np.float32)


def resample_pos_embed(
    pos: np.ndarray, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int
) -> np.ndarray:
    """(1, P + H*W, D) -> (1, P + H'*W', D): the first ``num_prefix`` (cls) entries are kept."""
    prefix, grid = pos[:, :num_prefix], pos[0, num_prefix:]
    if grid.shape[0] != old_grid[0] * old_grid[1]:
        raise CheckpointError(f"Position embedding has {grid.shape[0]} patch entries, not a {old_grid} grid.")
    resized = resample_grid(jnp.asarray(grid.reshape(*old_grid, -1)), new_grid)
    return np.concatenate([prefix, np.asarray(resized).reshape(1, -1, pos.shape[-1])], axis=1)


def move_to_front(pos: np.ndarray, indices: Iterable[int]) -> np.ndarray:
    """Moves entries ``indices`` of (1, L, D) to the front, in order (ViM keeps cls in place)."""
    for i, src in enumerate(indices):
        pos = np.concatenate([pos[:, :i], pos[:, src : src + 1], pos[:, i:src], pos[:, src + 1 :]], axis=1)
    return pos


@dataclasses.dataclass(frozen=True)
class SourceLayout:
    """How the source checkpoint was trained, where its shapes cannot tell."""

    kind: str  # "vim" (ImageNet ViM) or "aum"
    cls_position: str = "middle"  # ViM: where the cls entries sit inside pos_embed
    strides: tuple[int, int] | None = None  # AuM: the source's strides (default: its patch size)
    num_mel_bins: int = SEARCH_NUM_MEL_BINS  # AuM: the source's mel bins


def detect_source_kind(state: StateDict) -> str:
    """"vim" for a ViM-style checkpoint (bare ``pos_embed``), "aum" for an AuM one."""
    if POS_EMBED_KEY in state:
        return "aum"
    if VIM_POS_EMBED_KEY in state:
        return "vim"
    raise CheckpointError(f"Checkpoint has neither {POS_EMBED_KEY!r} nor {VIM_POS_EMBED_KEY!r}.")


def _vim_pos_embed(state: StateDict, target: AuMConfig, layout: SourceLayout) -> tuple[np.ndarray, tuple[int, int]]:
    pos = state.pop(VIM_POS_EMBED_KEY)
    length = pos.shape[1]
    if layout.cls_position == "double":
        pos = move_to_front(pos, [0, length - 1])
    elif layout.cls_position == "middle":
        pos = move_to_front(pos, [(length - 1) // 2])
    side = int(round((length - target.num_cls_tokens) ** 0.5))
    if side * side != length - target.num_cls_tokens:
        raise CheckpointError(f"ViM position embedding of length {length} is not a square grid.")
    return pos, (side, side)


def _aum_pos_embed(state: StateDict, target: AuMConfig, layout: SourceLayout) -> tuple[np.ndarray, tuple[int, int]]:
    pos = state.pop(POS_EMBED_KEY)
    patch = tuple(state[PATCH_KEY].shape[-2:])
    strides = layout.strides or patch
    frames = infer_audio_length(pos.shape[1] - target.num_cls_tokens, patch, strides, layout.num_mel_bins)
    source = AuMConfig(num_mel_bins=layout.num_mel_bins, audio_length=frames, patch_size=patch, strides=strides)
    return pos, source.patch_grid


# The backward-direction parameters that only some variants have; init mode may add or drop them.
BACKWARD_KEY = re.compile(r"^layers\.\d+\.mixer\.(A_b_log|D_b|(conv1d_b|x_proj_b|dt_proj_b)\.(weight|bias))$")


def init_from_source(
    state: StateDict, target: AuMConfig, layout: SourceLayout, *, seed: int = 0
) -> AudioMamba:
    """Builds a new ``target`` model whose backbone comes from a ViM or AuM checkpoint.

    A 3-channel patch kernel is averaged over its channels, and a kernel of another patch
    size is PI-resized (``resample_patch_kernel``), as the original's ``FlexiPatchEmbed``.

    As the original's non-strict load, a source and target of different variants may differ
    in their backward-direction parameters: the source's extra ones are dropped and the
    target's extra ones keep their fresh initialisation (both are logged). Any other missing,
    unexpected or mis-shaped key is an error.
    """
    state = dict(state)
    model = init_model(target, seed)
    patch = _require(state, PATCH_KEY)
    read_pos = _vim_pos_embed if layout.kind == "vim" else _aum_pos_embed
    pos, grid = read_pos(state, target, layout)
    state[POS_EMBED_KEY] = resample_pos_embed(pos, grid, target.patch_grid, target.num_cls_tokens)
    if patch.shape[1] != 1:
        patch = patch.mean(axis=1, keepdims=True)
    state[PATCH_KEY] = resample_patch_kernel(patch, target.patch_size)
    keep_init: set[str] = set()
    head_fits = "head.weight" in state and state["head.weight"].shape[0] == target.num_classes
    if layout.kind == "vim" or not head_fits:
        for key in HEAD_KEYS:
            state.pop(key, None)
        keep_init.update(HEAD_KEYS)
        logging.info("Head dropped; a fresh %d-class head is initialised.", target.num_classes)
    expected = expected_torch_shapes(model)
    dropped = sorted((k for k in state if k not in expected and BACKWARD_KEY.match(k)), key=_natural)
    fresh = sorted((k for k in expected if k not in state and BACKWARD_KEY.match(k)), key=_natural)
    for key in dropped:
        del state[key]
    if dropped or fresh:
        logging.warning(
            "Source and target variants differ: %d backward-direction tensors of the source are dropped "
            "(%s) and %d of the target keep their fresh initialisation (%s).",
            len(dropped), ", ".join(dropped[:4]) + (" ..." if len(dropped) > 4 else ""),
            len(fresh), ", ".join(fresh[:4]) + (" ..." if len(fresh) > 4 else ""),
        )
    load_torch_params(model, state, source=f"{layout.kind} source checkpoint", keep_init=keep_init | set(fresh))
    return model


def init_from_pretrained(path: str | os.PathLike, target: AuMConfig, init: Any, *, seed: int = 0) -> AudioMamba:
    """A new ``target`` model from a pretrained source: a ``.pth`` (ViM or AuM) or an
    aum-jax model directory, through :func:`init_from_source` either way.

    Args:
      path: the source.
      target: the new model's config.
      init: ``config.init`` (``kind``, ``vim_cls_position``, ``source_strides``,
        ``source_num_mel_bins``), used for a ``.pth`` whose shapes cannot tell.
      seed: initialisation of the parameters the source does not provide.
    """
    path = os.path.expanduser(os.fspath(path))
    logging.info("Initialising from %s", path)
    if os.path.isdir(path):
        source = model_files.load_model(path)
        state = torch_state_dict(source)
        layout = SourceLayout(kind="aum", strides=source.config.strides, num_mel_bins=source.config.num_mel_bins)
    else:
        state = read_torch_checkpoint(path)
        layout = SourceLayout(
            kind=init.kind or detect_source_kind(state),
            cls_position=init.vim_cls_position,
            strides=tuple(init.source_strides) if init.source_strides else None,
            num_mel_bins=init.source_num_mel_bins,
        )
    return init_from_source(state, target, layout, seed=seed)


def target_variant(name: str) -> str:
    """Accepts a paper name (Fo-Fo, Fo-Bi, Bi-Bi) or a ``bimamba_type`` (none, v1, v2)."""
    if name in AUM_TYPES:
        return AUM_TYPES[name]
    if name in AUM_TYPES.values():
        return name
    raise ValueError(f"Unknown variant {name!r}; use one of {list(AUM_TYPES)} or {list(AUM_TYPES.values())}.")
