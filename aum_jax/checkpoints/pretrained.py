"""A NEW AudioMamba initialised from a ViM ImageNet or AuM checkpoint.

As the original's ``imagenet_pretrain`` (ViM ImageNet) and ``aum_pretrain`` (AuM) options:
the position embedding grid is resampled, a 3-channel patch kernel is averaged (and
PI-resized to another patch size), and the head is dropped (always for ViM, for AuM when
the class count differs) and freshly initialised. The tensors are read and mapped by
:mod:`aum_jax.checkpoints.convert`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from aum_jax.checkpoints import model_files
from aum_jax.checkpoints.convert import (
    HEAD_KEYS,
    PATCH_KEY,
    POS_EMBED_KEY,
    SEARCH_NUM_MEL_BINS,
    VIM_POS_EMBED_KEY,
    CheckpointError,
    StateDict,
    expected_torch_shapes,
    infer_audio_length,
    load_torch_params,
    natural_key,
    read_torch_checkpoint,
    require_key,
    torch_state_dict,
)
from aum_jax.models import AUM_TYPES, AudioMamba, AuMConfig, init_model


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
    audio_length: int | None = None  # AuM: the source's frames (default: inferred from its pos_embed)


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
    frames = layout.audio_length or infer_audio_length(pos.shape[1] - target.num_cls_tokens, patch, strides,
                                                       layout.num_mel_bins)
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
    target's extra ones keep their fresh initialisation (both are logged). A source of another
    width (``embed_dim``), and any other missing, unexpected or mis-shaped key, is an error.
    """
    state = dict(state)
    patch = require_key(state, PATCH_KEY)
    if patch.shape[0] != target.embed_dim:
        raise CheckpointError(f"The {layout.kind} source checkpoint is {patch.shape[0]} wide (its {PATCH_KEY} is "
                              f"{tuple(patch.shape)}) and the model {target.embed_dim} (embed_dim): start from a "
                              f"source of the model's width, or give the model embed_dim {patch.shape[0]}")
    model = init_model(target, seed)
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
    dropped = sorted((k for k in state if k not in expected and BACKWARD_KEY.match(k)), key=natural_key)
    fresh = sorted((k for k in expected if k not in state and BACKWARD_KEY.match(k)), key=natural_key)
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


def match_head(state: StateDict, source_names: Sequence[str], target_names: Sequence[str]) -> None:
    """Puts the source head's rows in the order of the target's classes when both name the same
    classes; drops the head (a fresh one is initialised) when they name others."""
    if not source_names or not target_names or list(source_names) == list(target_names) or "head.weight" not in state:
        return
    if sorted(source_names) == sorted(target_names) and len(set(source_names)) == len(source_names):
        order = [list(source_names).index(name) for name in target_names]
        for key in HEAD_KEYS:
            state[key] = state[key][order]
        logging.info("The source's head is kept, its classes put in the target's order.")
        return
    for key in HEAD_KEYS:
        state.pop(key, None)
    logging.info("The source's classes are not the target's: a fresh head is initialised.")


def check_source(init: Any) -> None:
    """Checks ``config.init``'s source before a run builds anything: it exists, and a model
    directory's files are valid (:func:`aum_jax.checkpoints.model_files.open_model_dir`, verified unless
    ``init.verify`` is False).

    Raises:
      CheckpointError: no file or folder at ``init.checkpoint``, or a model directory
        that cannot serve (the file and field named).
    """
    if not init.checkpoint:
        return
    path = os.path.expanduser(os.fspath(init.checkpoint))
    where = f"config.init.checkpoint={init.checkpoint}"
    if not os.path.exists(path):
        raise CheckpointError(f"{where}: no such file or folder (a .pth of ViM or AuM, or an aum-jax model directory)")
    if os.path.isdir(path):
        try:
            model_files.open_model_dir(path, verify=init.verify)
        except model_files.ModelDirectoryError as e:
            raise CheckpointError(f"{where}: {e}") from e
    elif not os.access(path, os.R_OK):
        raise CheckpointError(f"{where}: the file cannot be read")


def init_from_pretrained(path: str | os.PathLike, target: AuMConfig, init: Any, *, seed: int = 0,
                         class_names: Sequence[str] = ()) -> AudioMamba:
    """A new ``target`` model from a pretrained source: a ``.pth`` (ViM or AuM) or an
    aum-jax model directory, through :func:`init_from_source` either way.

    Args:
      path: the source.
      target: the new model's config.
      init: ``config.init``: ``verify`` for a model directory; ``kind``, ``vim_cls_position``,
        ``source_strides``, ``source_num_mel_bins`` for a ``.pth`` whose shapes cannot tell.
      seed: initialisation of the parameters the source does not provide.
      class_names: the target's classes; a model directory naming its own keeps its head
        only for the same classes (:func:`match_head`).
    """
    path = os.path.expanduser(os.fspath(path))
    logging.info("Initialising from %s", path)
    if os.path.isdir(path):
        source = model_files.load_model(path, verify=init.verify)
        state = torch_state_dict(source)
        source_prep = model_files.load_preprocessing(model_files.model_directory(path))
        match_head(state, source_prep.class_names if source_prep else (), class_names)
        layout = SourceLayout(kind="aum", strides=source.config.strides, num_mel_bins=source.config.num_mel_bins,
                              audio_length=source.config.audio_length)
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
