"""diffda: cycling data assimilation with diffusion posterior sampling.

The Python entry point for notebooks and scripts (the ``cycler`` command calls the same
functions)::

    from diffda import Experiment

    exp = Experiment.from_toml("runs/sevenday.toml", overrides={"data.days": 1, "members": 4})
    result = exp.run(out="outputs/notebook", progress=True)
    result.analyses("reinitialized")      # xarray.Dataset: CF, cftime times, lat/lon
    result.metrics()                      # xarray.Dataset: (mode, cycle, variable)
    result.compare()                      # RMSE at days 1, 3, 5, 7 per mode and variable
    Experiment.resume("outputs/notebook") # continue a run that was stopped

The layers (``diffda.core``, ``diffda.emulators``, ``diffda.observations``,
``diffda.cycler``) are importable on their own; this package only re-exports the API.
"""

from __future__ import annotations

import os as _os

# An editable install (``pip install -e .``) maps each layer's folder to its name, but the
# folder ``cycler/`` has no ``__init__.py`` (it must never shadow matplotlib's ``cycler``),
# so ``diffda.cycler`` is found as a namespace portion of this package's path: add the
# source checkout's root to it. Only in a checkout (it has pyproject.toml): in an installed
# wheel the layers lie inside this package's own folder, and the folder above it
# (site-packages) holds matplotlib's ``cycler``, which must not be found here.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _root not in __path__:
    __path__.append(_root)

from diffda.experiment import Experiment, Result  # noqa: E402

__all__ = ["Experiment", "Result"]
