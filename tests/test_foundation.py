"""Config loading/validation, generator derivation, grids."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffda.core.config import ConfigError, from_mapping, load_config, require, to_mapping
from diffda.core.grid import Grid, coarsen, lat_weighted_mean
from diffda.core.rng import derive_seed, member_generators, randn_members, torch_generator


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    r: float = 1.0

    def __post_init__(self):
        require(self.r > 0, "r", self.r, "must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str
    steps: int = 10
    inner: Inner = dataclasses.field(default_factory=Inner)
    subset: tuple[int, ...] = ()


def test_config_round_trip(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\nsteps = 3\nsubset = [1, 2]\n[inner]\nr = 0.5\n')
    cfg = load_config(Outer, p)
    assert cfg == Outer(name="x", steps=3, inner=Inner(r=0.5), subset=(1, 2))
    assert from_mapping(Outer, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ('name = "x"\nstepz = 3\n', "unknown key stepz"),
        ('name = "x"\nsteps = "3"\n', "steps = '3': expected an integer"),
        ('name = "x"\n[inner]\nr = -1.0\n', r"inner.r = -1.0: must be positive"),
        ("steps = 1\n", "missing key name"),
        ('name = "x"\nsubset = [1, "a"]\n', r"subset\[1\]"),
    ],
)
def test_config_errors_name_file_key_and_value(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(Outer, p)
    assert "bad.toml" in str(err.value)


def test_generators_depend_on_every_key_and_not_on_batch():
    assert derive_seed(0, "obs", 1, 2) == derive_seed(0, "obs", 1, 2)
    seeds = {derive_seed(0, "obs", 1, 2), derive_seed(1, "obs", 1, 2),
             derive_seed(0, "sde", 1, 2), derive_seed(0, "obs", 2, 1)}
    assert len(seeds) == 4
    small = randn_members(member_generators(0, "s", 3, 2), (5,))
    large = randn_members(member_generators(0, "s", 3, 8), (5,))
    torch.testing.assert_close(small, large[:2])
    a = torch.randn(3, generator=torch_generator(7, "x", 0))
    b = torch.randn(3, generator=torch_generator(7, "x", 0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, "x")


def test_weatherbench_grid_and_coarsening():
    g = Grid(32, 64)
    assert g.lat[0] == pytest.approx(-87.1875) and g.lat[-1] == pytest.approx(87.1875)
    assert g.lon[0] == 0 and g.lon[-1] == pytest.approx(354.375)
    assert g.area_weights().mean() == pytest.approx(1.0)
    x = torch.randn(2, 3, 32, 64, dtype=torch.float64)
    # Global mean conserved; constants reproduced.
    for f in (2, 3, 4, 8):
        if 32 % f == 0:
            torch.testing.assert_close(lat_weighted_mean(x), lat_weighted_mean(coarsen(x, f)))
    c = torch.full((1, 1, 32, 64), 3.0, dtype=torch.float64)
    torch.testing.assert_close(coarsen(c, 4), torch.full((1, 1, 8, 16), 3.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="factor 3"):
        coarsen(x, 3)
    assert np.allclose(g.coarsened(4).lat, Grid(8, 16).lat)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_coarse_values_sit_at_their_labels(factor):
    """A zonal wave keeps its phase: the coarse value at label lon_j is a real multiple of
    the wave at lon_j (plain block means would shift it (f - 1)/2 fine cells east)."""
    fine = Grid(24, 48)
    coarse = fine.coarsened(factor)
    k = 2
    lon = np.deg2rad(fine.lon)
    wave = torch.as_tensor(np.cos(k * lon) + 0.5 * np.sin(k * lon))[None, :].repeat(24, 1)
    c = coarsen(wave, factor)[0].numpy()
    lonc = np.deg2rad(coarse.lon)
    expected = np.cos(k * lonc) + 0.5 * np.sin(k * lonc)
    ratio = c / expected[None, :][0]
    mask = np.abs(expected) > 0.3
    assert np.allclose(ratio[mask], ratio[mask][0], rtol=1e-10)
    assert 0.9 < ratio[mask][0] <= 1.0
    # The global mean of a field that is not zonally uniform is conserved.
    y = torch.rand(24, 48, dtype=torch.float64)
    torch.testing.assert_close(lat_weighted_mean(y), lat_weighted_mean(coarsen(y, factor)))


def test_json_safe_replaces_non_finite_floats():
    import json

    from diffda.core.config import json_safe

    out = json_safe({"a": float("inf"), "b": [1.0, float("nan")], "c": "x", "d": 2})
    assert out == {"a": None, "b": [1.0, None], "c": "x", "d": 2}
    json.dumps(out, allow_nan=False)
