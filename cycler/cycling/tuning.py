"""Honest tuning: a grid of parameters run on the tuning cases, the best values written to
a small file that the verification cases read.

:func:`diffda.cycler.cycling.cases.tune` (``cycler tune``) runs the experiment file's
tuning cases (``cases.tuning``, disjoint in time from the verification cases) once per
point of the grid, with only the tuned ``mode``; the score of
a point is the mean over the tuning cases of the steady-part RMSE of ``variable`` (in
units of the climate's standard deviation when ``variable = "all"``: the mean of the
variables' RMSE divided by their climate std). ``tuned.json`` holds the best values, every
point's score, and the configuration they were tuned for (the base config without the
tuned keys, the modes, the name and the start). A verification run reads it with
``cases.tuned = "PATH"``, which refuses a file tuned for another configuration and names
the keys that differ.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffda.core.config import ConfigError, set_dotted
from diffda.cycler.cycling.config import RunConfig, identity_mapping

FORMAT = "diffda-tuned-v1"
#: Keys that differ between the runs of one experiment and so do not identify it.
_NOT_IDENTITY = ("name", "runtime", "analysis.modes", "data.start")


def _drop(mapping: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in mapping:
        return
    if rest:
        if isinstance(mapping[head], dict):
            _drop(mapping[head], rest)
    else:
        del mapping[head]


def identity(cfg: RunConfig, tuned_keys: Sequence[str]) -> dict[str, Any]:
    """The configuration a tuning belongs to: ``cfg`` without the tuned keys and the keys
    that vary between the runs of one experiment."""
    mapping = identity_mapping(cfg)
    for key in (*_NOT_IDENTITY, *tuned_keys):
        _drop(mapping, key)
    return mapping


def identity_hash(mapping: Mapping[str, Any]) -> str:
    text = json.dumps(mapping, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]} ({a!r} here, {b!r} in the file)"]


def read_tuned(path: str | Path, cfg: RunConfig) -> dict[str, Any]:
    """The tuned values of ``path`` as dotted overrides, after checking that the file was
    tuned for ``cfg``'s configuration; ``ConfigError`` naming the file and the keys that
    differ otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"cases.tuned = {str(path)!r}: no such file (run cycler tune)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not a tuning file ({err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a tuning file (no format {FORMAT!r})")
    values = record["values"]
    mine = identity(cfg, list(values))
    if identity_hash(mine) != record["identity_hash"]:
        diff = _differences(mine, record["identity"])
        raise ConfigError(f"{path} was tuned for another configuration: "
                          + "; ".join(diff[:5]) + (" ..." if len(diff) > 5 else ""))
    return dict(values)


def grid(params: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, as ``{key: value}``, in order."""
    keys = list(params)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(params[k] for k in keys))]


def point_label(point: Mapping[str, Any]) -> str:
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())


def apply_tuned(data: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a config mapping) with the tuned ``values`` set."""
    for key, value in values.items():
        data = set_dotted(data, key, value)
    return data
