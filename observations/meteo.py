"""Unit conversions of radiosonde values: wind components, vapour pressure, humidity.

Wind: meteorological convention (the direction the wind blows *from*, degrees clockwise
from north). Moisture: Bolton (1980) saturation vapour pressure over water, specific
humidity from pressure and dewpoint, and their inverses. Plain numpy functions of arrays
(any shape), used by :mod:`diffda.observations.soundings`.
"""

from __future__ import annotations

import numpy as np

EPSILON = 0.622  # ratio of the gas constants of dry air and water vapour


def wind_components(direction_deg: np.ndarray, speed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(u, v)`` from meteorological direction (where the wind blows from, degrees
    clockwise from north) and speed: ``u = -s sin(d)``, ``v = -s cos(d)``."""
    d = np.deg2rad(np.asarray(direction_deg, dtype=float))
    s = np.asarray(speed, dtype=float)
    return -s * np.sin(d), -s * np.cos(d)


def wind_direction_speed(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`wind_components`; direction in ``[0, 360)`` (0 for calm)."""
    u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
    speed = np.hypot(u, v)
    direction = np.rad2deg(np.arctan2(-u, -v)) % 360.0
    return np.where(speed > 0, direction, 0.0), speed


def saturation_vapour_pressure(t_c: np.ndarray) -> np.ndarray:
    """Bolton (1980) Eq. 10: ``e_s = 6.112 exp(17.67 T / (T + 243.5))`` hPa, ``T`` in degC."""
    t_c = np.asarray(t_c, dtype=float)
    return 6.112 * np.exp(17.67 * t_c / (t_c + 243.5))


def dewpoint_from_vapour_pressure(e_hpa: np.ndarray) -> np.ndarray:
    """Inverse of :func:`saturation_vapour_pressure`: dewpoint (degC) of vapour pressure."""
    ln = np.log(np.asarray(e_hpa, dtype=float) / 6.112)
    return 243.5 * ln / (17.67 - ln)


def specific_humidity(p_hpa: np.ndarray, dewpoint_c: np.ndarray) -> np.ndarray:
    """``q = eps e / (p - (1 - eps) e)`` (kg/kg) with ``e = e_s(T_d)``."""
    e = saturation_vapour_pressure(dewpoint_c)
    return EPSILON * e / (np.asarray(p_hpa, dtype=float) - (1.0 - EPSILON) * e)


def dewpoint_from_specific_humidity(p_hpa: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`specific_humidity`: ``e = q p / (eps + (1 - eps) q)``."""
    q = np.asarray(q, dtype=float)
    e = q * np.asarray(p_hpa, dtype=float) / (EPSILON + (1.0 - EPSILON) * q)
    return dewpoint_from_vapour_pressure(e)
