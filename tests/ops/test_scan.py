"""The selective scans: every implementation against a float64 NumPy recurrence and against the
others, on outputs and all eight gradients; the Pallas kernels in interpret mode on awkward
shapes, both directions in one launch, bf16 inputs and their GPU block sizes; their CUDA
lowering through Triton (``jax.export``, no GPU needed); the C++ CPU kernel's reverse
direction, build cache and missing-compiler error; and the training memory the model's
gradient keeps per layer (``compiled.memory_analysis()``)."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from aum_jax.kernels.cpu import cpu_scan
from aum_jax.kernels.pallas.layout import BlockConfig, ScanLayout, backward_blocks, forward_blocks
from aum_jax.kernels.pallas.selective_scan import bidirectional_selective_scan
from flax import nnx
from jax import export

from aum_jax.models import AudioMamba, AuMConfig
from aum_jax.ops import IMPLEMENTATIONS, bidirectional_scan, resolve_impl, selective_scan
from aum_jax.ops import scan as scan_lib

SHAPES = [(2, 37, 12, 5), (1, 1, 7, 3), (3, 64, 24, 16), (2, 129, 6, 4)]  # (B, L, D, N): odd L, L=1, D not 2^k
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# Every registered implementation that runs on this machine's backend.
SCAN_IMPLS = [name for name, impl in IMPLEMENTATIONS.items() if not impl.platforms or jax.default_backend() in impl.platforms]
TRAINABLE = [name for name in SCAN_IMPLS if IMPLEMENTATIONS[name].differentiable]


class FakeDevice:
    """What ``resolve_impl`` reads of a device, for GPUs this machine does not have."""

    def __init__(self, platform: str, kind: str, compute_capability: str | None = None):
        self.platform, self.device_kind = platform, kind
        if compute_capability is not None:
            self.compute_capability = compute_capability


def make_inputs(batch, length, dim, n, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 8)
    return dict(
        u=jax.random.normal(keys[0], (batch, length, dim), dtype),
        delta=jax.random.normal(keys[1], (batch, length, dim), dtype),
        A=-jnp.exp(jax.random.normal(keys[2], (dim, n))),
        B=jax.random.normal(keys[3], (batch, length, n), dtype),
        C=jax.random.normal(keys[4], (batch, length, n), dtype),
        D=jax.random.normal(keys[5], (dim,)),
        z=jax.random.normal(keys[6], (batch, length, dim), dtype),
        delta_bias=jax.random.normal(keys[7], (dim,)),
    )


def numpy_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """The recurrence written out step by step in float64."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)
    if delta_softplus:
        delta = np.log1p(np.exp(delta))
    batch, length, dim = u.shape
    h = np.zeros((batch, dim, A.shape[1]))
    ys = []
    for t in range(length):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, C[:, t]))
    y = np.stack(ys, axis=1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1 + np.exp(-z))
    return y


def assert_close_relative(got, want, atol, msg=""):
    scale = float(jnp.abs(want).max()) + 1e-6
    np.testing.assert_allclose(np.asarray(got, np.float32) / scale, np.asarray(want, np.float32) / scale, atol=atol, err_msg=msg)


# ----------------------------------------------------------------------------------------
# One direction, every implementation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", SCAN_IMPLS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_recurrence(impl, shape):
    inputs = make_inputs(*shape)
    out = selective_scan(**inputs, delta_softplus=True, impl=impl, chunk_size=16)
    np.testing.assert_allclose(out, numpy_reference(**inputs), atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_all_eight_gradients_agree(shape):
    inputs = make_inputs(*shape, seed=1)

    def loss(impl, *args):
        out = selective_scan(*args, delta_softplus=True, impl=impl, chunk_size=16)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

    grads = {impl: jax.grad(loss, argnums=tuple(range(1, 9)))(impl, *inputs.values()) for impl in TRAINABLE}
    for a, b in itertools.combinations(TRAINABLE, 2):
        for name, ga, gb in zip(NAMES, grads[a], grads[b]):
            assert_close_relative(ga, gb, 2e-5, f"d/d{name}: {a} vs {b}")


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_optional_arguments_and_no_softplus(impl):
    inputs = make_inputs(2, 9, 5, 3)
    delta = jnp.abs(inputs["delta"])
    out = selective_scan(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], impl=impl, chunk_size=4)
    ref = numpy_reference(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], delta_softplus=False)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-4)


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_low_precision_inputs_keep_a_float32_state(impl):
    inputs = make_inputs(2, 50, 8, 4, dtype=jnp.bfloat16)
    out = selective_scan(**inputs, delta_softplus=True, impl=impl, chunk_size=16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), numpy_reference(**inputs), atol=0.1, rtol=0.02)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="Unknown selective-scan impl"):
        selective_scan(**make_inputs(1, 3, 2, 2), impl="cuda")


# ----------------------------------------------------------------------------------------
# Both directions in one launch
# ----------------------------------------------------------------------------------------


def bidirectional_inputs(batch, length, dim, n, per_direction: bool, seed=2, dtype=jnp.float32):
    """Fo-Bi shares u, delta, B, C, D and the bias between the directions; Bi-Bi does not."""
    count = 2 if per_direction else 1
    sets = [make_inputs(batch, length, dim, n, seed=seed + i, dtype=dtype) for i in range(2)]
    group = lambda name, k=count: tuple(sets[i][name] for i in range(k))
    return (group("u"), group("delta"), group("A", 2), group("B"), group("C"), group("D"), sets[0]["z"], group("delta_bias"))


@pytest.mark.parametrize("kernel", ["cpu", "pallas"])
@pytest.mark.parametrize("per_direction", [False, True], ids=["fobi_shared", "bibi_own"])
@pytest.mark.parametrize("shape", [(2, 37, 12, 5), (1, 1, 7, 3), (1, 100, 40, 16)])  # odd L, L=1, D = 2.5 blocks
def test_bidirectional_kernel_matches_the_flipped_reference(kernel, per_direction, shape):
    """The kernels read the second direction backwards in time; the reference flips it."""
    args = bidirectional_inputs(*shape, per_direction)
    weights = jnp.cos(jnp.arange(np.prod(shape[:3])).reshape(shape[:3]))
    scale = 0.5 if per_direction else 1.0

    def loss(impl, *args):
        out = bidirectional_scan(*args, delta_softplus=True, scale=scale, impl=impl, chunk_size=16)
        return jnp.sum(out * weights), out

    (_, want), want_grads = jax.value_and_grad(loss, argnums=tuple(range(1, 9)), has_aux=True)("sequential", *args)
    (_, got), got_grads = jax.value_and_grad(loss, argnums=tuple(range(1, 9)), has_aux=True)(kernel, *args)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-4)
    for name, g, w in zip(NAMES, got_grads, want_grads):
        for i, (gi, wi) in enumerate(zip(jax.tree.leaves(g), jax.tree.leaves(w))):
            assert gi.shape == wi.shape and gi.dtype == wi.dtype
            assert_close_relative(gi, wi, 2e-5, f"d/d{name}[{i}]")


def test_reverse_direction_reads_time_backwards_without_flipping():
    """The kernel's reverse scan of a sequence equals the forward scan of its mirror image."""
    inputs = make_inputs(2, 23, 8, 4, seed=3)
    flip = lambda x: jnp.flip(x, axis=1)
    mirrored = {k: flip(v) if v.ndim == 3 else v for k, v in inputs.items()}
    args = lambda x: ((x["u"],), (x["delta"],), (x["A"], x["A"]), (x["B"],), (x["C"],), (x["D"],), x["z"], (x["delta_bias"],))
    both = bidirectional_selective_scan(*args(inputs), delta_softplus=True)
    forward = selective_scan(**inputs, delta_softplus=True, impl="pallas")
    backward = flip(selective_scan(**mirrored, delta_softplus=True, impl="pallas"))
    np.testing.assert_allclose(both, forward + backward, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("fwd_unroll, bwd_unroll, chunk", [(4, 2, 32), (16, 8, 32), (2, 2, 6)],
                         ids=["gpu_table", "deep_unroll", "many_chunks"])
def test_gpu_block_sizes_agree_in_interpret_mode(fwd_unroll, bwd_unroll, chunk):
    """The unrolled groups and chunks of GPU configurations (not the interpret default), and
    short chunks whose boundaries (and a partial last one) the state crosses many times."""
    args = bidirectional_inputs(1, 40, 20, 16, per_direction=True, seed=4)
    blocks = (BlockConfig(block_d=8, num_warps=1, unroll=fwd_unroll, chunk=chunk),
              BlockConfig(block_d=8, num_warps=1, unroll=bwd_unroll, chunk=chunk))
    w = jnp.sin(jnp.arange(40 * 20).reshape(1, 40, 20))

    def loss(fn, *args):
        return jnp.sum(fn(*args) * w)

    kernel = functools.partial(bidirectional_selective_scan, delta_softplus=True, scale=0.5, interpret=True, blocks=blocks)
    reference = functools.partial(bidirectional_scan, delta_softplus=True, scale=0.5, impl="sequential")
    got = jax.grad(functools.partial(loss, kernel), argnums=tuple(range(8)))(*args)
    want = jax.grad(functools.partial(loss, reference), argnums=tuple(range(8)))(*args)
    for name, g, w in zip(NAMES, got, want):
        for gi, wi in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
            assert_close_relative(gi, wi, 2e-5, f"d/d{name}")


def test_bf16_inputs_give_bf16_gradients_close_to_float32():
    args32 = bidirectional_inputs(2, 40, 16, 8, per_direction=False, seed=5)
    args16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.ndim == 3 else x, args32)

    def loss(*args):
        out = bidirectional_selective_scan(*args, delta_softplus=True)
        return jnp.sum(out.astype(jnp.float32) ** 2)

    g32 = jax.grad(loss, argnums=tuple(range(8)))(*args32)
    g16 = jax.grad(loss, argnums=tuple(range(8)))(*args16)
    for name, a, b, x in zip(NAMES, g16, g32, args16):
        for ai, bi, xi in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(x)):
            assert ai.dtype == xi.dtype, name
            assert_close_relative(ai, bi, 0.05, f"d/d{name}")


def test_block_sizes_follow_the_shape():
    base = ScanLayout(12, 513, 1536, 16, 2, 1, 1, 1, True, True, 1.0)
    tiny_batch = ScanLayout(1, 65, 384, 16, 2, 1, 1, 1, True, True, 1.0)
    big_state = ScanLayout(12, 513, 1536, 64, 2, 1, 1, 1, True, True, 1.0)
    assert forward_blocks(base).block_d == 16 and forward_blocks(base).num_warps == 2
    assert backward_blocks(base).num_warps == 4  # 2 state elements a thread: no spills (kernel_report.py)
    assert forward_blocks(tiny_batch).block_d < 16  # more, smaller tiles to fill the GPU
    assert forward_blocks(big_state).block_d * 64 <= 4 * 256
    for layout in (base, tiny_batch, big_state):
        fwd, bwd = forward_blocks(layout), backward_blocks(layout)
        assert fwd.chunk == bwd.chunk and fwd.chunk % fwd.unroll == 0 and bwd.chunk % bwd.unroll == 0


# ----------------------------------------------------------------------------------------
# CUDA lowering, without a GPU
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, length, dim, n_u, dtype",
    [(2, 65, 384, 1, jnp.float32), (12, 513, 1536, 1, jnp.float32), (12, 513, 768, 2, jnp.float32), (2, 65, 384, 2, jnp.bfloat16)],
    ids=["tiny_fobi", "base_fobi_audioset", "small_bibi_audioset", "tiny_bibi_bf16"],
)
def test_forward_and_backward_lower_for_cuda_through_triton(batch, length, dim, n_u, dtype):
    S = jax.ShapeDtypeStruct
    rows, states = S((batch, length, dim), dtype), S((batch, length, 16), dtype)
    matrix, vector = S((dim, 16), jnp.float32), S((dim,), jnp.float32)

    def loss(*args):
        out = bidirectional_selective_scan(*args, delta_softplus=True, interpret=False)
        return out.astype(jnp.float32).sum()

    exported = export.export(
        jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8)))), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )((rows,) * n_u, (rows,) * n_u, (matrix,) * 2, (states,) * n_u, (states,) * n_u, (vector,) * n_u, rows, (vector,) * n_u)
    module = exported.mlir_module()
    assert module.count("__gpu$xla.gpu.triton") >= 2
    assert "aum_selective_scan_fwd" in module and "aum_selective_scan_bwd" in module
    assert "stablehlo.reverse" not in module  # the reverse direction is read backwards, not flipped


@pytest.mark.parametrize("batch", [2, None], ids=["fixed_batch", "symbolic_batch"])
def test_portable_export_lowers_the_kernels_for_cuda_and_the_sequential_scan_for_cpu(batch):
    """One artifact for CPU and CUDA: its CUDA lowering calls the forward kernel (for a fixed
    batch; Triton takes no symbolic grid), its CPU lowering is XLA's and gives the model's logits."""
    from aum_jax.inference.serving import export_model

    config = AuMConfig(embed_dim=32, depth=2, num_classes=4, num_mel_bins=32, audio_length=64, scan_impl="portable")
    exported = export_model(AudioMamba(config, rngs=nnx.Rngs(0)), batch, ("cpu", "cuda"))
    module = exported.mlir_module()
    assert ("__gpu$xla.gpu.triton" in module) == bool(batch) and ("aum_selective_scan_fwd" in module) == bool(batch)
    assert "aum_selective_scan_bwd" not in module
    assert "aum_scan_cpu" not in module  # the CPU lowering stays portable: no machine-built kernel
    x = jax.random.normal(jax.random.key(0), (2, config.audio_length, config.num_mel_bins))
    reference = AudioMamba(config.replace(scan_impl="sequential"), rngs=nnx.Rngs(0))
    reference.eval()
    np.testing.assert_allclose(exported.call(x), reference(x), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------
# The model: which scan runs, and what training keeps
# ----------------------------------------------------------------------------------------


def _eqns(jaxpr):
    """Every equation of the XLA program, not descending into Pallas kernels' bodies."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name != "pallas_call":
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from _eqns(sub)


def _model_grad_jaxpr(config: AuMConfig):
    model = AudioMamba(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.zeros((2, config.audio_length, config.num_mel_bins))
    loss = lambda p: nnx.merge(graphdef, p, rest)(x).sum()
    return jax.make_jaxpr(jax.grad(loss))(params).jaxpr


def test_auto_trains_with_the_kernels_on_gpu(monkeypatch):
    """On an Ampere-or-newer GPU the model's gradient runs the forward and backward kernels and
    no XLA loop over time: the only loop is the one over layers."""
    monkeypatch.setattr(scan_lib, "default_device", lambda: FakeDevice("gpu", "NVIDIA H100 80GB HBM3", "9.0"))
    assert resolve_impl("auto") == "pallas"
    config = AuMConfig(embed_dim=32, depth=3, num_classes=4, num_mel_bins=32, audio_length=64, bimamba_type="v2")
    eqns = list(_eqns(_model_grad_jaxpr(config)))
    kernels = {str(e.params.get("name", e.params.get("debug_info", ""))) for e in eqns if e.primitive.name == "pallas_call"}
    assert any("aum_selective_scan_fwd" in k for k in kernels) and any("aum_selective_scan_bwd" in k for k in kernels)
    loops = [e for e in eqns if e.primitive.name in ("scan", "while")]
    assert loops and all(e.primitive.name == "scan" and e.params["length"] == config.depth for e in loops)


def _temp_bytes_per_layer(impl: str, d_state: int) -> tuple[float, int]:
    """Temp memory the model's gradient grows by per extra layer, and one (B, L, D_inner) float32."""
    temp = {}
    for depth in (2, 4):
        config = AuMConfig(
            embed_dim=64, depth=depth, num_classes=10, audio_length=512, d_state=d_state, scan_impl=impl, scan_chunk_size=64
        )
        model = AudioMamba(config, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x = jnp.zeros((2, config.audio_length, config.num_mel_bins))
        grad = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p, rest)(x).sum()))
        temp[depth] = grad.lower(params).compile().memory_analysis().temp_size_in_bytes
    return (temp[4] - temp[2]) / 2, 2 * (config.num_patches + 1) * config.d_inner * 4


@pytest.mark.parametrize("impl", ["sequential", "chunked", "cpu"])
def test_training_keeps_order_bld_per_layer_never_bldn(impl):
    """With N = 16, one (B, L, D, N) float32 residual per layer would alone be 16 (B, L, D)
    tensors; the blocks keep about 4.3 (the matmul outputs), as the original keeps 4 to 5.
    Without the blocks' remat the chunked scan kept 30 and the sequential one 128; the
    associative scan goes through the same remat and was measured at 4.3 as well."""
    per_layer, bld = _temp_bytes_per_layer(impl, d_state=16)
    assert per_layer < 6 * bld, f"{impl}: {per_layer / bld:.1f} (B, L, D) tensors per layer"


# ----------------------------------------------------------------------------------------
# The CPU kernel: auto's pick on CPU, its build, and what happens without a compiler
# ----------------------------------------------------------------------------------------


def test_auto_trains_with_the_cpu_kernel_on_cpu():
    """On the CPU backend the model's gradient calls the C++ forward and backward kernels and
    runs no XLA loop over time: the only loop is the one over layers."""
    assert jax.default_backend() == "cpu" and resolve_impl("auto") == "cpu"
    config = AuMConfig(embed_dim=32, depth=3, num_classes=4, num_mel_bins=32, audio_length=64, bimamba_type="v1")
    eqns = list(_eqns(_model_grad_jaxpr(config)))
    targets = [e.params["target_name"] for e in eqns if e.primitive.name == "ffi_call"]
    kind = lambda name: name.split("_")[3]  # aum_scan_cpu_fwd[_<march>]: any build of AUM_JAX_CPU_MARCH
    kinds = [kind(t) for t in targets if t.startswith("aum_scan_cpu_")]
    assert kinds.count("fwd") >= 2 and kinds.count("bwd") == 2  # two directions
    loops = [e for e in eqns if e.primitive.name in ("scan", "while")]
    assert loops and all(e.primitive.name == "scan" and e.params["length"] == config.depth for e in loops)


def test_dots_scan_remat_keeps_the_readouts_and_skips_the_forward_rerun():
    """``remat="dots_scan"`` saves the scans' readouts: the backward calls the CPU forward kernel
    once per direction (not again to rebuild the readout) and the gradients do not change."""
    base = dict(embed_dim=32, depth=2, num_classes=4, num_mel_bins=32, audio_length=64, bimamba_type="v2",
                scan_impl="cpu")
    counts, grads = {}, {}
    for remat in ("dots", "dots_scan"):
        config = AuMConfig(**base, remat=remat)
        targets = [e.params["target_name"] for e in _eqns(_model_grad_jaxpr(config)) if e.primitive.name == "ffi_call"]
        counts[remat] = sum(t.startswith("aum_scan_cpu_fwd") for t in targets)
        model = AudioMamba(config, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        x = jax.random.normal(jax.random.key(1), (2, config.audio_length, config.num_mel_bins))
        grads[remat] = jax.grad(lambda p: nnx.merge(graphdef, p, rest)(x).sum())(params)
    assert counts == {"dots": 4, "dots_scan": 2}
    for a, b in zip(jax.tree.leaves(grads["dots"]), jax.tree.leaves(grads["dots_scan"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_cpu_kernel_build_is_cached_per_source_and_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library = cpu_scan.build.__wrapped__()
    assert library.parent == tmp_path / "aum_jax" and library.stat().st_size > 0
    stamp = library.stat().st_mtime_ns
    assert cpu_scan.build.__wrapped__() == library and library.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in library.parent.iterdir()] == [library.name]  # no partial files left


def test_missing_compiler_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(cpu_scan.CpuKernelUnavailable, match=r"no C\+\+ compiler 'no-such-c\+\+'.*scan_impl='sequential'"):
        cpu_scan.build.__wrapped__()
    monkeypatch.setattr(cpu_scan, "unavailable_reason", lambda: "no C++ compiler 'no-such-c++' on PATH")
    with caplog.at_level("WARNING"):
        assert resolve_impl("auto", FakeDevice("cpu", "AMD EPYC (no compiler)")) == "sequential"
    assert "AMD EPYC (no compiler)" in caplog.text and "no-such-c++" in caplog.text
    with pytest.raises(ValueError, match="cpu backend only"):
        resolve_impl("cpu", FakeDevice("gpu", "NVIDIA H100", "9.0"))


@pytest.mark.parametrize("capability, want", [("9.0", "pallas"), ("8.0", "pallas"), ("8.6", "pallas"), ("10.0", "pallas"),
                                              ("7.5", "chunked"), ("7.0", "chunked"), (None, "chunked")])
def test_auto_picks_the_pallas_kernels_only_on_ampere_or_newer(capability, want, caplog):
    """Pallas' Triton backend needs compute capability 8.0: a T4 (7.5), a V100 (7.0) or a GPU
    that is not CUDA get the chunked scan (O(B L D) training memory), with one warning that
    names the device and the reason."""
    kind = f"test GPU cc {capability}"
    with caplog.at_level("WARNING"):
        assert resolve_impl("auto", FakeDevice("gpu", kind, capability)) == want
        assert resolve_impl("auto", FakeDevice("gpu", kind, capability)) == want
    warnings = [r.getMessage() for r in caplog.records if kind in r.getMessage()]
    if want == "pallas":
        assert not warnings
    else:
        assert len(warnings) == 1 and "'pallas'" in warnings[0]
        assert ("below 8.0" if capability else "not a CUDA device") in warnings[0]


@pytest.mark.parametrize("impl", SCAN_IMPLS)
def test_each_registered_implementation_is_what_its_entry_says(impl):
    """``keeps_readout``: its readout carries the SCAN_READOUT name that remat "dots_scan" keeps;
    ``differentiable``: it has a gradient (else differentiating it fails); both read off the
    program, so that a new entry is checked without this test naming it."""
    x = make_inputs(1, 9, 4, 3)
    loss = lambda u: jnp.sum(selective_scan(u, *(x[n] for n in NAMES[1:]), delta_softplus=True, impl=impl))
    named = f"name={scan_lib.SCAN_READOUT}" in str(jax.make_jaxpr(loss)(x["u"]))
    assert named == IMPLEMENTATIONS[impl].keeps_readout
    if IMPLEMENTATIONS[impl].differentiable:
        assert np.isfinite(np.asarray(jax.grad(loss)(x["u"]))).all()
    else:
        with pytest.raises(Exception, match="[Dd]ifferentiation|JVP|jvp|transpose"):
            jax.grad(loss)(x["u"])


def test_auto_falls_back_to_the_scan_that_runs_everywhere():
    assert resolve_impl("auto", FakeDevice("tpu", "TPU v5e")) == "chunked"
