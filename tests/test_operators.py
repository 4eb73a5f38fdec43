"""Observation operators: accuracy, exactness, autodiff, seam, poles, batches, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffda.core.grid import Grid, coarsen_to
from diffda.observations.operators import (
    CoarseGridOperator,
    PointOperator,
    bicubic_stencil,
    forecast_grid_operator,
    keys_weights,
    low_resolution_operator,
    smooth_sphere_fields,
)
from diffda.observations.stations import StationNetwork

VARS = ("height", "u", "v", "tracer")


def _smooth_state(grid: Grid) -> torch.Tensor:
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    f = smooth_sphere_fields(la, lo)
    return torch.as_tensor(np.stack([f["s"], f["u"], f["v"]])[None])


def _points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lat = np.concatenate([np.rad2deg(np.arcsin(rng.uniform(-1, 1, n))),
                          rng.uniform(84, 90, 40), rng.uniform(-90, -84, 40)])
    return lat, rng.uniform(0, 360, len(lat))


def _errors(grid: Grid, lat: np.ndarray, lon: np.ndarray, **kw: object) -> dict[str, float]:
    n = len(lat)
    op = PointOperator(grid, ("s", "u", "v"), np.tile(lat, 3), np.tile(lon, 3),
                       ["s"] * n + ["u"] * n + ["v"] * n, **kw)
    y = op(_smooth_state(grid))[0].numpy()
    exact = smooth_sphere_fields(lat, lon)
    return {k: float(np.abs(y[j * n:(j + 1) * n] - exact[k]).max())
            for j, k in enumerate(("s", "u", "v"))}


def test_keys_weights_partition_of_unity_and_quadratic_reproduction() -> None:
    t = np.linspace(0, 1, 11, endpoint=False)
    w = keys_weights(t)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-14)
    nodes = np.arange(-1, 3)
    for p in (lambda s: s, lambda s: 3 * s**2 - s + 2):
        np.testing.assert_allclose((w * p(nodes)).sum(-1), p(t), atol=1e-13)
    np.testing.assert_allclose(keys_weights(np.zeros(1)), [[0, 1, 0, 0]], atol=1e-15)


def test_point_operator_accuracy_on_smooth_fields_third_order() -> None:
    lat, lon = _points(400)
    e32 = _errors(Grid(32, 64), lat, lon)
    e64 = _errors(Grid(64, 128), lat, lon)
    for k in ("s", "u", "v"):  # field amplitudes are O(1)
        assert e32[k] < 2e-4, (k, e32)
        assert e64[k] < 3e-5, (k, e64)
        assert e32[k] / e64[k] > 6.0, (k, e32[k] / e64[k])  # third order: ~8


def test_vector_sign_across_the_pole_matters() -> None:
    lat = np.array([88.0, 89.5, -88.5, -89.9])
    lon = np.array([10.0, 200.0, 95.0, 300.0])
    good = _errors(Grid(32, 64), lat, lon)
    naive = _errors(Grid(32, 64), lat, lon, vector_variables=())
    assert good["u"] < 1e-4 and good["v"] < 1e-4
    assert naive["u"] > 100 * good["u"] and naive["v"] > 100 * good["v"]
    assert naive["s"] == good["s"]  # scalars are unaffected


def test_constants_exact_and_pole_values() -> None:
    grid = Grid(16, 32)
    x = torch.full((2, 4, 16, 32), 3.25, dtype=torch.float64)
    lat = np.array([90.0, -90.0, 0.0, 45.0, 87.0])
    lon = np.array([0.0, 123.0, 359.99, 7.0, 181.0])
    op = PointOperator(grid, VARS, lat, lon, ["height", "tracer", "height", "tracer", "height"])
    torch.testing.assert_close(op(x), torch.full((2, 5), 3.25, dtype=torch.float64))
    # At the pole, whatever longitude it is asked at, a smooth scalar (exact value 1 at
    # the north pole) is interpolated to within the scheme's error.
    f = _smooth_state(grid)[:, :1]
    p = PointOperator(grid, ("s",), [90.0] * 4, [0.0, 90.0, 200.0, 359.0], ["s"] * 4)(f)
    assert float((p - 1.0).abs().max()) < 5e-4


def test_seam_continuity_and_periodicity() -> None:
    grid = Grid(32, 64)
    x = torch.randn(3, 4, 32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lat = np.array([-60.0, 10.0, 33.3, 75.0])
    eps = 1e-7
    west = PointOperator(grid, VARS, lat, 360.0 - eps + 0 * lat, ["u", "height", "v", "tracer"])
    east = PointOperator(grid, VARS, lat, eps + 0 * lat, ["u", "height", "v", "tracer"])
    at0 = PointOperator(grid, VARS, lat, 0 * lat, ["u", "height", "v", "tracer"])
    torch.testing.assert_close(west(x), at0(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(east(x), at0(x), atol=1e-5, rtol=0)
    neg = PointOperator(grid, VARS, lat, -10.0 + 0 * lat, ["u"] * 4)
    pos = PointOperator(grid, VARS, lat, 350.0 + 0 * lat, ["u"] * 4)
    torch.testing.assert_close(neg(x), pos(x), atol=1e-12, rtol=0)
    # At a grid node the operator returns the node value.
    node = PointOperator(grid, VARS, [grid.lat[5]], [grid.lon[63]], ["v"])
    torch.testing.assert_close(node(x)[:, 0], x[:, 2, 5, 63], atol=1e-12, rtol=0)


def test_gradcheck_jvp_matrix_and_member_independence() -> None:
    grid = Grid(8, 16)
    op = PointOperator(grid, VARS, [89.0, -5.0, 30.0], [350.0, 3.0, 180.0], ["u", "height", "v"])
    x = torch.randn(2, 4, 8, 16, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(op, (x,))
    dx = torch.randn_like(x)
    y, jy = torch.func.jvp(op, (x.detach(),), (dx,))
    torch.testing.assert_close(jy, op(dx))  # linear: J dx = M dx
    h = op.matrix()
    torch.testing.assert_close(op(x.detach()), x.detach().reshape(2, -1) @ h.T)
    jac = torch.func.jacrev(op)(x.detach())  # (2, 3, 2, 4, 8, 16)
    assert float(jac[0, :, 1].abs().max()) == 0.0 and float(jac[1, :, 0].abs().max()) == 0.0
    torch.testing.assert_close(op(x)[1:], op(x[1:]))
    per_member = torch.func.vmap(lambda xi: op(xi[None])[0])(x.detach())
    torch.testing.assert_close(per_member, op(x.detach()))
    # float32 states work too (weights cast to the state's dtype).
    assert op(x.detach().float()).dtype == torch.float32
    assert len(bicubic_stencil(np.array([0.0]), np.array([0.0]), grid)[0][0]) == 4


def test_from_network_order_and_labels() -> None:
    net = StationNetwork.from_arrays(["A", "B"], [10.0, -20.0], [30.0, 300.0])
    op = PointOperator.from_network(net, Grid(16, 32), VARS, observed=("height", "u"))
    assert op.labels == ("A:height", "A:u", "B:height", "B:u")
    assert op.obs_variable_index.tolist() == [0, 1, 0, 1]
    assert op.n_obs == 4


def test_point_operator_rejects_bad_inputs() -> None:
    grid = Grid(8, 16)
    with pytest.raises(ValueError, match="lat=91.0"):
        PointOperator(grid, VARS, [91.0], [0.0], ["u"])
    with pytest.raises(ValueError, match="lat=nan"):
        PointOperator(grid, VARS, [float("nan")], [0.0], ["u"])
    with pytest.raises(ValueError, match="unknown observed variable 'temperature'"):
        PointOperator(grid, VARS, [0.0], [0.0], ["temperature"])
    with pytest.raises(ValueError, match="even nlon"):
        PointOperator(Grid(8, 15), VARS, [0.0], [0.0], ["u"])
    op = PointOperator(grid, VARS, [0.0], [0.0], ["u"])
    with pytest.raises(ValueError, match=r"expects a state \(member, 4, 8, 16\)"):
        op(torch.zeros(1, 3, 8, 16))


def test_coarse_operators_are_exactly_coarsen_to() -> None:
    grid = Grid(32, 64)
    x = torch.randn(3, 4, 32, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lr = low_resolution_operator(grid, VARS)
    fc = forecast_grid_operator(grid, VARS)
    assert (lr.coarse, fc.coarse) == (Grid(8, 16), Grid(16, 32))
    assert torch.equal(lr(x), coarsen_to(x, Grid(8, 16)).reshape(3, -1))
    assert torch.equal(fc(x), coarsen_to(x, Grid(16, 32)).reshape(3, -1))
    assert torch.equal(lr.unflatten(lr(x)), coarsen_to(x, Grid(8, 16)))
    sub = CoarseGridOperator(grid, Grid(8, 16), VARS, observed=("v", "height"))
    assert torch.equal(sub.unflatten(sub(x)), coarsen_to(x[:, [2, 0]], Grid(8, 16)))
    assert sub.obs_variable_index.tolist() == [2] * 128 + [0] * 128
    h = sub.matrix()
    torch.testing.assert_close(x.reshape(3, -1) @ h.T, sub(x))
    torch.testing.assert_close(h.sum(1), torch.ones(sub.n_obs, dtype=torch.float64))
    c = torch.full_like(x, -1.5)
    torch.testing.assert_close(lr(c), torch.full((3, lr.n_obs), -1.5, dtype=torch.float64))
    small = CoarseGridOperator(Grid(8, 16), Grid(4, 8), VARS)
    xs = torch.randn(2, 4, 8, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (xs,))
    _, jy = torch.func.jvp(small, (xs.detach(),), (xs.detach(),))
    torch.testing.assert_close(jy, small(xs.detach()))
    with pytest.raises(ValueError, match="cannot coarsen grid 32x64 to 12x24"):
        CoarseGridOperator(grid, Grid(12, 24), VARS)
    with pytest.raises(ValueError, match="unknown observed variable 'w'"):
        CoarseGridOperator(grid, Grid(8, 16), VARS, observed=("w",))
