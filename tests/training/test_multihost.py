"""Two local JAX processes (jax.distributed on CPU) train on disjoint shards and agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.data.pipeline import input_pipeline
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import objectives, update
from tests.helpers import REPO_ROOT, toy_config, write_toy_dataset

CE = ("supervised", objectives.Supervised("CE"))  # the step's objective and settings.

NUM_STEPS = 2

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    port, process_id, workdir, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    import numpy as np
    from flax import nnx
    from aum_jax.core import sharding
    from aum_jax.data.pipeline import input_pipeline
    from aum_jax.training import train, update
    from tests.training.test_multihost import CE, NUM_STEPS, model_and_optimizer
    from tests.helpers import toy_config

    config = toy_config(paths, num_steps=NUM_STEPS, checkpoint_every=1)
    mesh = sharding.make_mesh(config.mesh)
    model, optimizer = model_and_optimizer(config)
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    nnx.update(optimizer, sharding.replicate(nnx.state(optimizer), mesh))
    iterator = input_pipeline.make_train_iterator(config.data)  # this process's shard.
    losses = [float(update.train_step(model, optimizer, sharding.global_batch(next(iterator), mesh), *CE)["loss"])
              for _ in range(NUM_STEPS)]
    iterator.close()
    params = [float(np.asarray(x).sum()) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]
    report = train.train_and_evaluate(config, workdir)  # the whole job: checkpoints, eval, gather.
    print("RESULT " + json.dumps({"process": jax.process_index(), "count": jax.process_count(), "losses": losses,
                                  "params": params, "eval": report["final"]}))
    jax.distributed.shutdown()
""")


def model_and_optimizer(config) -> tuple[nnx.Module, nnx.Optimizer]:
    model = init_model(AuMConfig.from_dict(config.model.to_dict()), config.train.seed)
    optimizer = nnx.Optimizer(model, update.make_optimizer(config.optimizer, optax.constant_schedule(1e-3)),
                              wrt=nnx.Param)
    return model, optimizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path: Path) -> None:
    paths = write_toy_dataset(tmp_path / "toy")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)  # 1 device each.
    port = _free_port()
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(port), str(i), str(tmp_path / "work"), json.dumps(paths)],
                         env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=200)
            assert worker.returncode == 0, stderr[-4000:]
            outputs.append(json.loads(next(l for l in stdout.splitlines() if l.startswith("RESULT "))[7:]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert [o["count"] for o in outputs] == [2, 2]
    assert outputs[0]["losses"] == outputs[1]["losses"]
    assert outputs[0]["params"] == outputs[1]["params"]
    assert outputs[0]["eval"] == outputs[1]["eval"]
    assert outputs[0]["eval"]["num_examples"] == 12  # every eval clip once, across both shards.
    # The two processes exported one model together.
    exported = model_files.load_model(tmp_path / "work" / "model")
    assert exported.config.depth == toy_config(paths, num_steps=NUM_STEPS).model.depth
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "work").iterdir())
    assert not (tmp_path / "work" / "lock.json").exists()  # one lock for the run, taken and released.

    # One process fed the concatenation of the two shards' batches reaches the same point.
    config = toy_config(paths, num_steps=NUM_STEPS)
    model, optimizer = model_and_optimizer(config)
    shards = [input_pipeline.make_train_iterator(config.data, process_index=i, process_count=2) for i in range(2)]
    losses = []
    for _ in range(NUM_STEPS):
        parts = [next(it) for it in shards]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in ("fbank", "label")}
        losses.append(float(update.train_step(model, optimizer, batch, *CE)["loss"]))
    for it in shards:
        it.close()
    params = [float(np.asarray(x).sum()) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]
    np.testing.assert_allclose(outputs[0]["losses"], losses, rtol=1e-5)
    np.testing.assert_allclose(outputs[0]["params"], params, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "work" / "checkpoints" / str(NUM_STEPS)).is_dir()
