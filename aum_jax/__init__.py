"""aum-jax: Audio-Mamba (AuM) in JAX/Flax NNX.

``kernels/`` and ``configs/`` are top-level folders of the repository and subpackages of this
one (``aum_jax.kernels``, ``aum_jax.configs``): an install maps them in (pyproject's
``package-dir``); in a checkout this package's path reaches them, so that scripts run from
the repository without installing.
"""

import os as _os

_CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_CHECKOUT, "kernels", "__init__.py")) and _CHECKOUT not in __path__:
    __path__.append(_CHECKOUT)
