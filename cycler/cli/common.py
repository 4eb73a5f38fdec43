"""Helpers shared by the command-line entry points of :mod:`diffda.cycler.cli`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from diffda.core.config import json_safe


def print_record(
    record: Mapping[str, Any],
    as_json: bool,
    print_text: Callable[[Any], None],
    *,
    indent: int | None = None,
    strict: bool = False,
) -> None:
    """Print a command's result: one JSON document (``--json``) or text by ``print_text``.

    ``strict``: write non-finite floats as ``null`` (:func:`diffda.core.config.json_safe`)
    and refuse anything else that is not strict JSON; otherwise ``json.dumps`` as it is.
    ``print_text(record)`` gets the record unchanged.
    """
    if not as_json:
        print_text(record)
    elif strict:
        print(json.dumps(json_safe(record), indent=indent, allow_nan=False))
    else:
        print(json.dumps(record, indent=indent))
