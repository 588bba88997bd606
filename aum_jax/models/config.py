"""The hyperparameters of an AudioMamba model, with the original AuM defaults."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from aum_jax.models.mixers import MIXERS
from aum_jax.ops.scan import SCAN_IMPLS

EMBED_DIMS: dict[str, int] = {"tiny": 192, "small": 384, "base": 768}
# The paper's block names and the original `bimamba_type` values they map to.
AUM_TYPES: dict[str, str] = {"Fo-Fo": "none", "Fo-Bi": "v1", "Bi-Bi": "v2"}
BIMAMBA_TYPES: tuple[str, ...] = tuple(AUM_TYPES.values())
CLS_POSITIONS: tuple[str, ...] = ("middle", "head", "end", "double", "none")
POOLS: tuple[str, ...] = ("mean", "last", "max")
# How a token knows where it is: "absolute", the original's learned table over the patch grid (which ties
# a model to its training length); "none", no table: the recurrence and the causal conv give the order, so
# a model reads audio of any length in one pass, and streams.
POSITIONS: tuple[str, ...] = ("absolute", "none")
REMAT_POLICIES: tuple[str, ...] = ("dots", "dots_scan", "none", "full")

# The model's own fields that fix its parameters and forward pass, besides its mixer's
# (``MIXERS[mixer].fields``): what fine-tuning adopts from a model directory (architecture_fields).
# The rest: the data's (input shape, classes), training's (dropout) and execution's (scan, remat, dtype).
MODEL_ARCHITECTURE_FIELDS = ("embed_dim", "depth", "mixer", "patch_size", "strides", "norm_epsilon",
                             "residual_in_fp32", "cls_position", "position", "pool", "transpose_token_sequence")
DATA_FIELDS = ("num_mel_bins", "audio_length", "num_classes")
TRAINING_FIELDS = ("drop_rate", "drop_path_rate")
EXECUTION_FIELDS = ("scan_impl", "scan_chunk_size", "remat", "dtype")

BimambaType = Literal["none", "v1", "v2"]
ClsPosition = Literal["middle", "head", "end", "double", "none"]


def _check_type(name: str, value: Any, default: Any) -> None:
    """Raises TypeError unless ``value`` has the type of the field's ``default`` (a pair for the tuples;
    an int or None for ``dt_rank``; a finite number for a float)."""
    if isinstance(default, bool):
        ok, wanted = isinstance(value, bool), "true or false"
    elif isinstance(default, int) or default is None:
        ok, wanted = (isinstance(value, int) and not isinstance(value, bool)) or (default is None and value is None), \
            "a whole number" + (" or null" if default is None else "")
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        wanted = "a finite number"
    elif isinstance(default, str):
        ok, wanted = isinstance(value, str), "a string"
    else:  # the (frequency, time) pairs.
        ok = isinstance(value, (tuple, list)) and len(value) == len(default) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        wanted = f"a list of {len(default)} whole numbers"
    if not ok:
        raise TypeError(f"{name} must be {wanted}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AuMConfig:
    """Everything that fixes an AudioMamba's parameters and forward pass.

    Field defaults are those of the original training script (`src/run.py`) and of its
    `AudioMamba` and `Mamba` constructors.
    """

    num_mel_bins: int = 128  # F: fbank bins of the input
    audio_length: int = 1024  # T: frames of the input (10 ms each)
    patch_size: tuple[int, int] = (16, 16)  # (frequency, time) patch
    strides: tuple[int, int] = (16, 16)  # (frequency, time) stride; smaller than the patch overlaps
    embed_dim: int = 768  # model width: tiny 192, small 384, base 768
    depth: int = 24  # number of blocks
    num_classes: int = 527  # head outputs; 0 drops the head
    mixer: str = "mamba"  # the blocks' token mixer, a kind of aum_jax.models.mixers.MIXERS (the original's: Mamba)
    bimamba_type: BimambaType = "v1"  # "none" Fo-Fo, "v1" Fo-Bi, "v2" Bi-Bi
    d_state: int = 16  # SSM state size N
    d_conv: int = 4  # causal depthwise conv width
    expand: int = 2  # inner width = expand * embed_dim
    dt_rank: int | None = None  # None: ceil(embed_dim / 16)
    dt_min: float = 1e-3  # softplus(dt bias) is drawn log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # lower clamp of the drawn dt
    dt_scale: float = 1.0  # dt_proj weights are U(+-dt_scale / sqrt(dt_rank))
    conv_bias: bool = True  # bias of the causal conv
    proj_bias: bool = False  # bias of in_proj and out_proj
    norm_epsilon: float = 1e-5  # RMSNorm epsilon
    residual_in_fp32: bool = True  # keep the residual stream in float32
    if_devide_out: bool = True  # Bi-Bi: average (not sum) the two directions
    cls_position: ClsPosition = "middle"  # where the cls token sits; "none" pools instead
    position: str = "absolute"  # the original's learned position table; "none": order from the recurrence (POSITIONS)
    pool: str = "mean"  # with cls_position "none": "mean", "last" or "max" (head, then max over tokens)
    transpose_token_sequence: bool = False  # order patches time-major (needs strides == patch_size)
    drop_rate: float = 0.0  # dropout after the position embedding
    drop_path_rate: float = 0.0  # stochastic depth: linear in depth, shifted by one block
    scan_impl: str = "auto"  # selective scan: sequential, associative, chunked, cpu, pallas; auto picks by backend
    scan_chunk_size: int = 128  # steps per chunk for scan_impl="chunked"
    remat: str = "dots"  # what a block keeps for its backward: "dots" (matmul outputs), "dots_scan" (and the scans' readouts), "none" (all), "full" (nothing)
    dtype: str = "float32"  # compute dtype of the projections; params and state stay float32

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), field.default)
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "strides", tuple(self.strides))
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {tuple(MIXERS)}, got {self.mixer!r}")
        if self.bimamba_type not in BIMAMBA_TYPES:
            raise ValueError(f"bimamba_type must be one of {BIMAMBA_TYPES}, got {self.bimamba_type!r}")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {CLS_POSITIONS}, got {self.cls_position!r}")
        if self.scan_impl not in (*SCAN_IMPLS, "auto"):
            raise ValueError(f"scan_impl must be one of {SCAN_IMPLS} or 'auto', got {self.scan_impl!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        positive = dict(
            num_mel_bins=self.num_mel_bins, audio_length=self.audio_length, embed_dim=self.embed_dim,
            depth=self.depth, d_state=self.d_state, d_conv=self.d_conv, expand=self.expand,
            patch_size=min(self.patch_size), strides=min(self.strides),
        )
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        for name in ("drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.cls_position != "none" and self.pool != "mean":
            raise ValueError(f"pool={self.pool!r} needs cls_position='none'; with a cls token the cls token is the output.")
        if self.transpose_token_sequence and self.strides != self.patch_size:
            raise ValueError("transpose_token_sequence needs strides equal to the patch size, as in the original.")
        for name, value in (("num_mel_bins", self.num_mel_bins), ("audio_length", self.audio_length)):
            patch = self.patch_size[0] if name == "num_mel_bins" else self.patch_size[1]
            if value < patch:
                raise ValueError(f"{name}={value} is smaller than the patch ({patch}).")

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def resolved_dt_rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.embed_dim / 16)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(F', T'): patches along frequency and time, as a VALID strided conv gives."""
        (pf, pt), (sf, st) = self.patch_size, self.strides
        return (self.num_mel_bins - pf) // sf + 1, (self.audio_length - pt) // st + 1

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def num_cls_tokens(self) -> int:
        return {"none": 0, "double": 2}.get(self.cls_position, 1)

    @property
    def max_pooled(self) -> bool:
        """The head scores every token and the logits are max-pooled over them (no pooled features)."""
        return self.cls_position == "none" and self.pool == "max"

    @property
    def aum_type(self) -> str:
        return {v: k for k, v in AUM_TYPES.items()}[self.bimamba_type]

    @property
    def size_name(self) -> str:
        return {v: k for k, v in EMBED_DIMS.items()}.get(self.embed_dim, f"d{self.embed_dim}")

    def replace(self, **changes: Any) -> AuMConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AuMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown AuMConfig fields: {unknown}")
        return cls(**dict(values))

    def architecture_fields(self) -> tuple[str, ...]:
        """The fields that fix this model's parameters and forward pass: the model's and its mixer's."""
        return MODEL_ARCHITECTURE_FIELDS + MIXERS[self.mixer].fields
