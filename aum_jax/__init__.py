"""aum-jax: Audio-Mamba (AuM) in JAX/Flax NNX.

``kernels/`` and ``configs/`` are top-level folders of the repository and subpackages of this
one (``aum_jax.kernels``, ``aum_jax.configs``): an install maps them in (pyproject's
``package-dir``); in a checkout this package's path reaches them, so that scripts run from
the repository without installing. ``kernels/`` has no ``__init__.py``: a namespace folder
never shadows an installed package of that name (Hugging Face's ``kernels``, which
transformers imports) when the checkout's root is on ``sys.path``.
"""

import os as _os

_CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_CHECKOUT, "configs", "__init__.py")) and _CHECKOUT not in __path__:
    __path__.append(_CHECKOUT)
