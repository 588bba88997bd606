"""Data parallelism splits the selective scan: on a mesh each device runs the scan kernels on
its own batch rows (``aum_jax.kernels.partition``), with no gather of activations, and the
step computes what one device computes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from aum_jax.kernels import partition
from aum_jax.kernels.pallas.selective_scan import bidirectional_selective_scan
from jax.sharding import AbstractMesh, AxisType

from tests.helpers import REPO_ROOT, subprocess_env, xla_flags

GLOBAL_BATCH = 16

STEP_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, ml_collections, numpy as np, optax
    from flax import nnx
    from aum_jax.core import sharding
    from aum_jax.training import objectives, update
    from aum_jax.models import AuMConfig, init_model

    assert jax.device_count() == 8, jax.devices()
    batch_size, runs = int(sys.argv[1]), json.loads(sys.argv[2])
    rng = np.random.default_rng(0)
    batch = {"fbank": rng.normal(size=(batch_size, 32, 32)).astype(np.float32),
             "label": np.eye(3, dtype=np.float32)[rng.integers(3, size=batch_size)]}
    out = []
    for devices, variant, impl in runs:
        mesh = sharding.make_mesh(ml_collections.ConfigDict({"data_axis": "data", "num_devices": devices}))
        config = AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=2, num_classes=3,
                           bimamba_type=variant, scan_impl=impl)
        model = init_model(config, 0)
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)  # parameters move by the gradient
        nnx.update(model, sharding.replicate(nnx.state(model), mesh))
        nnx.update(optimizer, sharding.replicate(nnx.state(optimizer), mesh))
        arrays = sharding.global_batch(batch, mesh)
        hlo = update.train_step.lower(model, optimizer, arrays, "supervised", objectives.Supervised("CE")).compile().as_text()
        calls = []
        for line in hlo.splitlines():
            target = re.search(r'custom_call_target="(aum_scan_cpu_(?:fwd|bwd)|aum_[a-z_]+)', line)  # any build
            if target:
                shapes = re.findall(r"f32\\[([0-9,]+)\\]", line.split("custom-call(")[0])
                calls.append([target.group(1), [[int(d) for d in s.split(",")] for s in shapes]])
        params = lambda: [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]
        before = params()
        metrics = [update.train_step(model, optimizer, arrays, "supervised", objectives.Supervised("CE"))]
        updates = [(x - b).ravel().tolist() for x, b in zip(params(), before)]
        metrics.append(update.train_step(model, optimizer, arrays, "supervised", objectives.Supervised("CE")))
        leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        out.append({"devices": devices, "variant": variant, "impl": impl, "calls": calls,
                    "param_devices": min(len(x.sharding.device_set) for x in leaves),
                    "all_gathers": len(re.findall(r"= \\S+ all-gather(?:-start)?\\(", hlo)),
                    "losses": [float(m["loss"]) for m in metrics], "grad_norms": [float(m["grad_norm"]) for m in metrics],
                    "updates": updates})
    print("RESULT " + json.dumps(out))
""")


def _run_steps(runs: list[tuple[int, str, str]]) -> list[dict]:
    env = subprocess_env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"))
    result = subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(GLOBAL_BATCH), json.dumps(runs)], env=env,
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))[7:])


def _assert_same_step(got: dict, want: dict) -> None:
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norms"], want["grad_norms"], rtol=1e-5)
    for a, b in zip(got["updates"], want["updates"], strict=True):  # the first SGD step: the gradients
        # Sums over the batch and channels run in another order per device count (for XLA's own
        # ops too): single entries with cancellation move by up to ~1e-3 of the leaf's largest.
        a, b = np.asarray(a), np.asarray(b)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-12, np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_train_step_scans_each_devices_rows_and_matches_one_device(variant):
    """update.train_step on 4 and 8 simulated CPU devices: every call of the C++ scan kernels
    (forward and backward) sees the per-device batch, the step gathers no activations, and
    two SGD steps give the losses and gradient norms of one device, and the first step its
    parameter updates (the gradients)."""
    runs = _run_steps([(n, variant, "cpu") for n in (1, 4, 8)])
    one = runs[0]
    for run in runs:
        per_device = GLOBAL_BATCH // run["devices"]
        targets = sorted({name for name, _ in run["calls"]})
        assert targets == ["aum_scan_cpu_bwd", "aum_scan_cpu_fwd"], run["calls"]
        for name, shapes in run["calls"]:
            # fwd: out (B, L, D); bwd: du, ddelta (B, L, D), dA per row (B, D, N), dB, dC (groups, B, L, N).
            batch_dims = [s[0] for s in shapes[:3]] + [s[1] for s in shapes[3:]]
            assert set(batch_dims) == {per_device}, (run["devices"], name, shapes)
        assert run["all_gathers"] == 0, run["devices"]
        assert run["param_devices"] == run["devices"]  # the parameters stay replicated over the mesh.
        _assert_same_step(run, one)


def test_pallas_kernels_under_a_mesh_match_one_device():
    """The Pallas kernels (interpret mode here) go through the same per-shard wrapper: their
    parameter gradients are summed over the mesh once, so 4 devices train as 1."""
    one, four = _run_steps([(1, "v1", "pallas"), (4, "v1", "pallas")])
    _assert_same_step(four, one)


def _pallas_call_batches(jaxpr) -> list[int]:
    """The leading (batch) dimension of every pallas_call's first operand, in nested jaxprs too."""
    batches = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            batches.append(eqn.invars[0].aval.shape[0])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            batches.extend(_pallas_call_batches(sub))
    return batches


def test_pallas_calls_see_the_per_device_batch_on_an_abstract_mesh():
    """Traced under a 4-device mesh, the forward and backward Pallas kernels are called on
    (B / 4, L, D) rows; without a mesh on (B, L, D)."""
    batch, length, dim, n = 8, 9, 16, 4
    u = jax.random.normal(jax.random.key(0), (batch, length, dim))
    a, b = -jnp.ones((dim, n)), jnp.ones((batch, length, n))
    loss = lambda u: bidirectional_selective_scan((u,), (u,), (a, a), (b,), (b,), (), u, (), delta_softplus=True).sum()
    mesh = AbstractMesh((4,), ("data",), (AxisType.Auto,))
    with jax.sharding.use_abstract_mesh(mesh):
        sharded = _pallas_call_batches(jax.make_jaxpr(jax.grad(loss))(u).jaxpr)
    plain = _pallas_call_batches(jax.make_jaxpr(jax.grad(loss))(u).jaxpr)
    assert len(sharded) == 2 and set(sharded) == {batch // 4}  # forward and backward kernels
    assert len(plain) == 2 and set(plain) == {batch}


def test_no_mesh_or_an_indivisible_batch_runs_the_kernel_whole():
    assert partition.batch_axes(8) is None  # no mesh: plain jit, serving, export
    with jax.sharding.use_abstract_mesh(AbstractMesh((4,), ("data",), (AxisType.Auto,))):
        assert partition.batch_axes(8)[1] == ("data",)
        assert partition.batch_axes(6) is None  # 4 devices do not divide 6 rows
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("data",), (AxisType.Auto,))):
        assert partition.batch_axes(8) is None
