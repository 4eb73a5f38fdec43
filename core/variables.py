"""The canonical variables of the system and their CF attributes (units, long names,
standard names), shared by the data layer, the observation files and the outputs."""

from __future__ import annotations

VARIABLE_ATTRS: dict[str, dict[str, str]] = {
    "height": {"units": "m", "long_name": "free-surface height (geopotential-height-like)",
               "standard_name": "geopotential_height"},
    "u": {"units": "m s-1", "long_name": "eastward wind", "standard_name": "eastward_wind"},
    "v": {"units": "m s-1", "long_name": "northward wind", "standard_name": "northward_wind"},
    "tracer": {"units": "kg kg-1", "long_name": "humidity-like tracer mixing ratio",
               "standard_name": "specific_humidity"},
    "height_eq": {"units": "m", "long_name": "equilibrium height (relaxation target, forcing)"},
    "orography": {"units": "m", "long_name": "surface height", "standard_name": "surface_altitude"},
    "land_sea_mask": {"units": "1", "long_name": "land-sea mask (1 = land)",
                      "standard_name": "land_binary_mask"},
    "t2m": {"units": "K", "long_name": "2 m temperature", "standard_name": "air_temperature"},
}
