"""Serving export: the jax.export artifact, read back in a fresh process, matches predict."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aum_jax.checkpoints.model_files import ModelDirectoryError, load_model
from aum_jax.inference import classify
from tests.helpers import NAMES, REPO_ROOT, save_tiny_fobi

# Runs without aum-jax or Flax: only jax and numpy, as a serving process would.
SERVE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    features = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(exported.call(features)))
    np.save(sys.argv[4], np.asarray(exported.call(features[:3])))  # another batch size.
    print(json.dumps({"platforms": list(exported.platforms), "in": str(exported.in_avals[0])}))
""")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_fobi(tmp_path_factory.mktemp("export") / "m", mean=-4.2677393, std=4.5689974, loss="BCE",
                          class_names=NAMES)


def test_exported_model_matches_predict_in_a_fresh_process(model_dir, tmp_path):
    artifact = tmp_path / "model.jaxexport"
    result = subprocess.run([sys.executable, "-m", "aum_jax.export", "--model-dir", str(model_dir), "--output", str(artifact)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "model.preprocessing.json").read_text())
    assert sidecar["preprocessing"]["mean"] == -4.2677393 and sidecar["preprocessing"]["class_names"][2] == "c2"
    assert sidecar["output"]["score"] == "sigmoid" and sidecar["platforms"] == ["cpu", "cuda"]

    features = np.random.default_rng(0).normal(size=(5, 128, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    served = subprocess.run([sys.executable, "-c", SERVE, str(artifact), str(tmp_path / "x.npy"),
                             str(tmp_path / "y5.npy"), str(tmp_path / "y3.npy")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr
    info = json.loads(served.stdout.strip().splitlines()[-1])
    assert info["platforms"] == ["cpu", "cuda"] and info["in"] == "float32[batch,128,128]"  # symbolic batch.
    expected, _ = classify.logits_and_features(load_model(model_dir), features)
    np.testing.assert_allclose(np.load(tmp_path / "y5.npy"), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.load(tmp_path / "y3.npy"), expected[:3], atol=1e-5, rtol=0)


def test_fixed_batch_export(model_dir, tmp_path):
    from aum_jax.inference import serving

    artifact, _ = serving.write_export(model_dir, tmp_path / "fixed.jaxexport", batch=2, platforms=("cpu",))
    import jax

    exported = jax.export.deserialize(bytearray(artifact.read_bytes()))
    assert exported.in_avals[0].shape == (2, 128, 128) and exported.out_avals[0].shape == (2, 10)
    with pytest.raises(ModelDirectoryError, match="nowhere does not exist"):
        serving.write_export(tmp_path / "nowhere", tmp_path / "x.jaxexport")


def test_an_unknown_platform_is_one_line_and_writes_nothing(model_dir, tmp_path):
    from tests.helpers import assert_one_error_line, run

    result = run("-m", "aum_jax.export", "--model-dir", str(model_dir), "--output", str(tmp_path / "m.jaxexport"),
                 "--platforms", "cpu,tpuu")
    assert_one_error_line(result, "unknown platform(s) tpuu", "cpu, cuda, rocm, tpu")
    assert not list(tmp_path.iterdir())


def test_export_onto_a_full_disk_keeps_the_old_artifact(model_dir, tmp_path):
    """Writes past a file size limit fail with EFBIG, as on a full disk with ENOSPC: the error is one line,
    the artifact at the output path and its sidecar are the old ones, and no staging file is left."""
    import resource
    import signal

    from tests.helpers import assert_one_error_line, run

    output, sidecar = tmp_path / "m.jaxexport", tmp_path / "m.preprocessing.json"
    output.write_bytes(b"the old artifact")
    sidecar.write_text("{}")

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the tiny model's artifact is 2.5 MB.

    result = run("-m", "aum_jax.export", "--model-dir", str(model_dir), "--output", str(output), "--platforms", "cpu",
                 "--overwrite", preexec_fn=limit_file_size, env={"PYTHONDONTWRITEBYTECODE": "1", "JAX_ENABLE_COMPILATION_CACHE": "false"})
    assert_one_error_line(result, f"cannot write {output}", "file too large", "nothing was written")
    assert output.read_bytes() == b"the old artifact" and sidecar.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jaxexport", "m.preprocessing.json"]
