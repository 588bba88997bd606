"""Importing the original PyTorch AuM and ViM checkpoints into AudioMamba.

``convert``: a trained AuM ``state_dict`` becomes the same model in NNX. Its config is
inferred from the tensor shapes, and every key must fit: a missing, unexpected or
mis-shaped key is an error that names each one. One map, :func:`key_map`, pairs each
PyTorch key with its NNX path and layout; the state dict of a model, the shapes a
checkpoint must have and the loader all derive from it. A NEW model initialised from a
ViM or AuM source is :mod:`aum_jax.checkpoints.pretrained`'s.

PyTorch is needed only here, to read ``.pth`` files, and only with ``weights_only=True``:
a checkpoint can never run code on load.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from aum_jax.core.errors import UserError
from aum_jax.models import AudioMamba, AuMConfig, init_model
from aum_jax.models.mixers import MIXERS, MixerKind
from aum_jax.models.torch_layout import LINEAR, PATCH, SAME, Layout

StateDict = dict[str, np.ndarray]

POS_EMBED_KEY = "pos_embed.pos_embed"  # AuM stores it inside a FlexiPosEmbed module
VIM_POS_EMBED_KEY = "pos_embed"  # ViM stores it as a bare parameter
PATCH_KEY = "patch_embed.proj.weight"
MIXER_PREFIX = "layers.0.mixer."  # the first block's mixer tensors, which fix its config.
HEAD_KEYS = ("head.weight", "head.bias")
# The original infers a checkpoint's frame count by trying powers of two with 128 mel bins.
SEARCH_LOG2_AUDIO_LENGTHS = range(6, 20)
SEARCH_NUM_MEL_BINS = 128


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read, or whose tensors do not fit the model."""


# ----------------------------------------------------------------------------------------
# Reading .pth files
# ----------------------------------------------------------------------------------------


def read_torch_checkpoint(path: str | os.PathLike) -> StateDict:
    """Reads a ``.pth`` file into a flat ``{key: float32 array}`` dict.

    Accepts a plain ``state_dict``, keys prefixed with ``module.`` (DataParallel,
    Accelerate), and a ``{"model": state_dict}`` or ``{"state_dict": ...}`` wrapper. Every
    tensor must be floating point (float16, bfloat16, float32 or float64).
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
        named = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(
            f"Refusing to load {path}: it needs arbitrary pickled objects"
            + (f" ({named.group(1)})" if named else "") + ", which could run code; only tensor state_dicts are accepted."
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
        if not value.is_floating_point():  # every AuM/ViM parameter is; a cast would load garbage.
            raise CheckpointError(f"{path}: entry {key!r} is a {str(value.dtype).removeprefix('torch.')} tensor, "
                                  "not floating point: the checkpoint is damaged or not an AuM/ViM state_dict.")
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


def require_key(state: StateDict, key: str) -> np.ndarray:
    """``state[key]``, or a CheckpointError saying the checkpoint is not an AuM/ViM state_dict."""
    if key not in state:
        raise CheckpointError(f"Checkpoint has no {key!r}; it is not an AuM/ViM state_dict.")
    return state[key]


def _depth(state: StateDict) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if not indices:
        raise CheckpointError("Checkpoint has no 'layers.N.*' keys; it is not an AuM/ViM state_dict.")
    return max(indices) + 1


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
    patch = require_key(state, PATCH_KEY)
    embed_dim, patch_size = patch.shape[0], tuple(int(s) for s in patch.shape[-2:])
    strides = tuple(strides) if strides else patch_size
    n_cls = _cls_tokens(state)
    pos = require_key(state, POS_EMBED_KEY if POS_EMBED_KEY in state else VIM_POS_EMBED_KEY)
    if audio_length is None:
        audio_length = infer_audio_length(pos.shape[1] - n_cls, patch_size, strides, num_mel_bins)
    if cls_position is None:
        cls_position = {0: "none", 1: "middle", 2: "double"}[n_cls]
    mixer = {key.removeprefix(MIXER_PREFIX): value for key, value in state.items() if key.startswith(MIXER_PREFIX)}
    try:
        mixer_fields = MIXERS["mamba"].infer_fields(mixer)  # every original checkpoint's mixer is Mamba.
    except KeyError as e:
        raise CheckpointError(f"Checkpoint has no {MIXER_PREFIX + e.args[0]!r}; it is not an AuM/ViM state_dict.") from e
    return AuMConfig(
        num_mel_bins=num_mel_bins,
        audio_length=audio_length,
        patch_size=patch_size,
        strides=strides,
        embed_dim=int(embed_dim),
        depth=_depth(state),
        num_classes=int(state["head.weight"].shape[0]) if "head.weight" in state else 0,
        mixer="mamba",
        cls_position=cls_position,
        **mixer_fields,
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


def _layout(name: str, ndim: int, mixer: MixerKind) -> Layout:
    """The layout of PyTorch tensor ``name`` (a block's without its ``layers.N.`` prefix): the mixer
    kind's own where it has one, else the patch conv's, a Linear weight's or the same."""
    if name == PATCH_KEY:
        return PATCH
    if name.startswith("mixer.") and (own := mixer.torch_layout(name.removeprefix("mixer."))) is not None:
        return own
    return LINEAR if name.endswith(".weight") and ndim == 2 else SAME


def key_map(params: dict[tuple[str, ...], Any], mixer: str) -> Iterator[tuple[str, tuple[str, ...], int | None, Layout]]:
    """The one map between the trees: ``(torch key, NNX path, layer index, layout)`` per PyTorch tensor.

    Args:
      params: the model's flat NNX parameters ``{path: array}``; the blocks' parameters are
        stacked along a leading layer axis under ``("layers", ...)``.
      mixer: the model's mixer kind (``config.mixer``); one the original does not have has no
        PyTorch counterpart (CheckpointError).

    Yields:
      One entry per PyTorch key; ``layer`` is the index into the stacked axis (None outside
      the blocks), and ``layout`` converts one tensor between the two layouts.
    """
    kind = MIXERS[mixer]
    if kind.torch_layout is None:
        raise CheckpointError(f"a model with the {mixer!r} mixer has no counterpart in the original PyTorch AuM")
    for path, value in params.items():
        if path[0] == "layers":
            name = _torch_name(path[1:])
            layout = _layout(name, len(value.shape) - 1, kind)
            for i in range(value.shape[0]):
                yield f"layers.{i}.{name}", path, i, layout
        else:
            name = _torch_name(path)
            yield name, path, None, _layout(name, len(value.shape), kind)


def _flat_params(model: AudioMamba) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def torch_state_dict(model: AudioMamba) -> StateDict:
    """The PyTorch ``state_dict`` of the original model equal to ``model`` (NumPy arrays)."""
    params = {path: np.asarray(value) for path, value in _flat_params(model).items()}
    return {key: layout.to_torch(params[path] if layer is None else params[path][layer])
            for key, path, layer, layout in key_map(params, model.config.mixer)}


def expected_torch_shapes(model: AudioMamba) -> dict[str, tuple[int, ...]]:
    """Every PyTorch key the original model of ``model.config`` has, with its shape."""
    params = _flat_params(model)
    return {key: layout.to_torch(np.broadcast_to(np.float32(0), params[path].shape[layer is not None:])).shape
            for key, path, layer, layout in key_map(params, model.config.mixer)}


KEYS_SHOWN = 8  # of each kind (missing, unexpected, mis-shaped) in check_keys' message.


def check_keys(state: StateDict, expected: Mapping[str, tuple[int, ...]], *, source: str = "checkpoint") -> None:
    """Raises ``CheckpointError`` naming the missing, unexpected and mis-shaped keys: the first
    :data:`KEYS_SHOWN` of each kind, and how many more."""
    missing = sorted(set(expected) - set(state), key=natural_key)
    unexpected = sorted(set(state) - set(expected), key=natural_key)
    misshaped = sorted(
        (k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k])), key=natural_key
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [f"The {source} does not fit the model:"]
    for kind, keys, describe in (
        ("missing", missing, lambda k: f"missing key {k} (expected shape {tuple(expected[k])})"),
        ("unexpected", unexpected, lambda k: f"unexpected key {k} (shape {tuple(state[k].shape)})"),
        ("mis-shaped", misshaped,
         lambda k: f"mis-shaped key {k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k])}"),
    ):
        lines += [f"  {describe(k)}" for k in keys[:KEYS_SHOWN]]
        if len(keys) > KEYS_SHOWN:
            lines.append(f"  and {len(keys) - KEYS_SHOWN} more {kind} keys")
    raise CheckpointError("\n".join(lines))


def natural_key(key: str) -> list[Any]:
    """Sorts ``layers.10`` after ``layers.9``."""
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
    loaded: dict[tuple[str, ...], list[np.ndarray]] = {}
    for key, path, _, layout in key_map(flat, model.config.mixer):
        if key in state:
            loaded.setdefault(path, []).append(layout.to_nnx(state[key]))
    for path, arrays in loaded.items():
        flat[path] = jnp.asarray(np.stack(arrays) if path[0] == "layers" else arrays[0], flat[path].dtype)
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(flat))
    nnx.update(model, params)


def convert(state: StateDict, config: AuMConfig | None = None, **infer_kwargs) -> AudioMamba:
    """Builds the NNX twin of a trained AuM ``state_dict``."""
    config = config or infer_config(state, **infer_kwargs)
    model = init_model(config)
    load_torch_params(model, state)
    return model
