"""Timing AuM the way training and serving run it, for ``scripts/benchmark.py`` and ``scripts/gpu_check.py``.

The train step is :func:`aum_jax.training.update.train_step` with the recipes' optimizer chain
(``apply_if_finite`` over L2 decay, Adam and the warm-up/multistep schedule); inference is
the model's jitted forward pass in eval mode. It needs jax, flax, optax and ml_collections
only, so that it runs on a bare GPU image.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aum_jax.models import AudioMamba, AuMConfig
from aum_jax.training import objectives, update

# The precision modes of a GPU check: float32 at the original's "highest", TF32 matmuls, bf16 compute.
PRECISIONS: dict[str, tuple[str, str]] = {  # mode: (matmul precision, model dtype)
    "highest": ("highest", "float32"),
    "tensorfloat32": ("tensorfloat32", "float32"),
    "bfloat16": ("highest", "bfloat16"),
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published recipe's model at its training shape."""

    embed_dim: int  # tiny 192, small 384, base 768
    bimamba_type: str  # "v1" Fo-Bi, "v2" Bi-Bi
    frames: int  # fbank frames: 1024 (AudioSet, VGGSound), 128 (Speech Commands)
    num_classes: int
    train_batch: int  # 0: inference only
    infer_batch: int
    depth: int = 24
    lr: float = 1e-5  # the AudioSet/VGGSound recipes' peak lr

    @property
    def size(self) -> str:
        return {192: "tiny", 384: "small", 768: "base"}.get(self.embed_dim, f"d{self.embed_dim}")

    def model_config(self, scan_impl: str = "auto", remat: str = "dots", dtype: str = "float32") -> AuMConfig:
        return AuMConfig(embed_dim=self.embed_dim, bimamba_type=self.bimamba_type, audio_length=self.frames,
                         num_classes=self.num_classes, depth=self.depth, scan_impl=scan_impl, remat=remat, dtype=dtype)


RECIPES: dict[str, Recipe] = {
    "base_fobi_audioset": Recipe(768, "v1", 1024, 527, 12, 12),  # the AudioSet / VGGSound recipes
    "base_fobi_spc": Recipe(768, "v1", 128, 35, 48, 48),  # Speech Commands V2
    "small_bibi_audioset": Recipe(384, "v2", 1024, 527, 12, 12),
    "tiny_fobi_spc": Recipe(192, "v1", 128, 35, 32, 32),  # the CPU training figure
    "base_fobi_spc_infer8": Recipe(768, "v1", 128, 35, 0, 8),  # the CPU inference figure
    "smoke_bibi": Recipe(32, "v2", 32, 5, 4, 4, depth=1),  # gpu_check --smoke
}
GPU_RECIPES = ("base_fobi_audioset", "base_fobi_spc", "small_bibi_audioset")


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn``, after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def matmul_flops_per_clip(config: AuMConfig) -> float:
    """Forward matmul FLOPs of one clip: patch embedding, the blocks' projections, the head."""
    length, d, di = config.num_patches + config.num_cls_tokens, config.embed_dim, config.d_inner
    rank, n = config.resolved_dt_rank, config.d_state
    branches = 2 if config.bimamba_type == "v2" else 1
    per_block = 2 * length * (d * 2 * di + branches * (di * (rank + 2 * n) + rank * di) + di * d)
    patch = 2 * config.num_patches * config.patch_size[0] * config.patch_size[1] * d
    return config.depth * per_block + patch + 2 * d * config.num_classes


def _planned_gb(compiled) -> float | None:
    """The memory XLA plans for a compiled call: arguments, outputs and temporaries."""
    memory = compiled.memory_analysis()
    if memory is None:
        return None
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes) / 1e9


def device_peak_gb() -> float | None:
    """The device's peak bytes in use so far (None where the backend keeps no statistics)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"] / 1e9


def optimizer(recipe: Recipe, steps_per_epoch: int = 1000):
    """The recipes' optimizer chain at ``recipe.lr``."""
    from aum_jax.configs import common

    config = common.get_optimizer_config(recipe.lr, warmup=True)
    return update.make_optimizer(config, update.learning_rate_schedule(config, steps_per_epoch))


def measure(recipe: Recipe, *, scan_impl: str = "auto", remat: str = "dots", mode: str = "highest",
            repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """Train-step ms and clips/s, inference clips/s and memory of one recipe, in one precision mode.

    Returns a dict of ``train_step_ms``, ``train_clips_s``, ``train_matmul_gflops`` and
    ``train_planned_gb`` (if the recipe trains), ``infer_ms``, ``infer_clips_s`` and
    ``peak_gb`` (the device's peak so far, where it keeps statistics).
    """
    precision, dtype = PRECISIONS[mode]
    config = recipe.model_config(scan_impl, remat, dtype)
    key_x, key_y = jax.random.split(jax.random.key(seed))
    figures: dict[str, float] = {}
    with jax.default_matmul_precision(precision):
        model = AudioMamba(config, rngs=nnx.Rngs(seed))
        if recipe.train_batch:
            opt = nnx.Optimizer(model, optimizer(recipe), wrt=nnx.Param)
            batch = {"fbank": jax.random.normal(key_x, (recipe.train_batch, recipe.frames, config.num_mel_bins)),
                     "label": (jax.random.uniform(key_y, (recipe.train_batch, recipe.num_classes)) < 0.05).astype(jnp.float32)}
            step = (model, opt, batch, "supervised", objectives.Supervised("BCE"))
            planned = _planned_gb(update.train_step.lower(*step).compile())
            if planned is not None:
                figures["train_planned_gb"] = planned
            ms = time_ms(lambda: update.train_step(*step)["loss"], repeats, warmup=2)
            figures.update(train_step_ms=ms, train_clips_s=recipe.train_batch / ms * 1000,
                           train_matmul_gflops=3 * recipe.train_batch * matmul_flops_per_clip(config) / ms / 1e6)
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        x = jax.random.normal(key_x, (recipe.infer_batch, recipe.frames, config.num_mel_bins))
        ms = time_ms(lambda: forward(state, x), repeats, warmup=2)
        figures.update(infer_ms=ms, infer_clips_s=recipe.infer_batch / ms * 1000)
    peak = device_peak_gb()
    if peak is not None:
        figures["peak_gb"] = peak
    return figures
