"""Model directories made from the golden fixtures, shared by the tests that serve a model."""

from __future__ import annotations

from pathlib import Path

from aum_jax import convert
from aum_jax.model_files import save_model
from aum_jax.preprocessing import Preprocessing

TINY_FOBI = Path(__file__).parent / "fixtures" / "aum_torch" / "tiny_fobi" / "state_dict.pth"
NAMES = tuple(f"c{i}" for i in range(10))  # the fixture's 10 classes.


def save_tiny_fobi(out: Path, *, mean: float, std: float, loss: str, class_names: tuple[str, ...] = ()) -> Path:
    """The original's tiny Fo-Bi checkpoint (4 blocks, 192 wide, 128 x 128 input) converted into
    the model directory ``out`` with the given statistics, loss and class names."""
    prep = Preprocessing(num_mel_bins=128, target_length=128, mean=mean, std=std, loss=loss, class_names=class_names)
    save_model(convert.convert(convert.read_torch_checkpoint(TINY_FOBI)), out, preprocessing=prep)
    return out
