"""What a per-clip stage is: :class:`Stage`, the :class:`ClipContext` it is built with, and the element it maps.

A stage is a picklable grain map over one clip's element, a dict. An element that failed
(``{"failure": (key, kind, message)}``) or is an evaluation padding row (``{"padding": True}``)
lacks the key a stage ``needs`` and passes it untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections
import numpy as np

from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.records import AudioSource

Element = dict[str, Any]
# A failed clip, as (key naming the file, kind of failure (audio.BAD_INPUT_KINDS), message).
Failure = tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class ClipContext:
    """What every stage may use besides its own config keys.

    Attributes:
      preprocessing: the features (resampling, fbank, padding or cutting, normalisation).
      num_classes: the label vector's length.
      train: training (augmentations on) or evaluation.
      source: the clips (:meth:`AudioSource.load_audio`); None where only the settings are checked.
      partly_labelled: training clips without labels exist: each element carries ``labelled``.
      teacher_preprocessing: an online teacher's features where they differ from the student's, else None.
    """

    preprocessing: Preprocessing
    num_classes: int
    train: bool
    source: AudioSource | None = None
    partly_labelled: bool = False
    teacher_preprocessing: Preprocessing | None = None


class Stage:
    """One per-clip step: ``element -> element`` for the elements holding :attr:`needs`.

    A subclass declares, as keywords of its ``class`` statement
    (``class Gain(Stage, name="gain", order=65, stream="gain", train_only=True)``):

    - ``name``: what messages and the registry call it;
    - ``order``: its place in a clip's sequence of stages (lower runs first);
    - ``stream``: the name of its random stream (its per-clip generator is seeded from the
      pipeline seed), or None for a deterministic stage;
    - ``train_only``: True for an augmentation, which evaluation leaves out;
    - ``needs``: the element key it works on ("waveform" before the fbank, "fbank" after);
    - ``keys``: the ``config.data`` keys it reads (their defaults and comments: ``configs/data.py``);
    - ``switches``: the keys of which any one set turns it on (none: always on);

    and implements :meth:`apply`, plus :meth:`enabled` (default: by ``switches``) and
    :meth:`check` (default: nothing) where its settings need them. A built stage holds the values of its
    ``keys`` in ``self._settings`` (so it pickles without the config) and the context.
    """

    name: ClassVar[str]
    order: ClassVar[int]
    stream: ClassVar[str | None] = None
    train_only: ClassVar[bool] = False
    needs: ClassVar[str] = "fbank"
    keys: ClassVar[tuple[str, ...]] = ()
    switches: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, name: str, order: int, stream: str | None = None, train_only: bool = False,
                          needs: str = "fbank", keys: tuple[str, ...] = (), switches: tuple[str, ...] = (),
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.order, cls.stream, cls.train_only = name, order, stream, train_only
        cls.needs, cls.keys, cls.switches = needs, keys, switches

    def __init__(self, config: ml_collections.ConfigDict, context: ClipContext):
        self._context = context
        self._settings: dict[str, Any] = {key: config[key] for key in self.keys}

    @property
    def keeps_earlier(self) -> bool:
        """True: this stage and every earlier one give a clip the same result every epoch, kept after its first use."""
        return False

    @classmethod
    def enabled(cls, config: ml_collections.ConfigDict, context: ClipContext) -> bool:
        """Whether ``config`` turns this stage on (a train-only stage is never built in evaluation)."""
        return not cls.switches or any(config[key] for key in cls.switches)

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        """Raises ValueError for settings of this stage that cannot work (checked in training and evaluation)."""

    def __call__(self, element: Element, rng: np.random.Generator | None = None) -> Element:
        return self.apply(element, rng) if self.needs in element else element

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        """The stage's transform of one clip's element; ``rng`` is its stream's per-clip generator (None without one)."""
        raise NotImplementedError
