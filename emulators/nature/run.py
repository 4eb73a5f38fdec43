"""The nature run ("reanalysis") of the default world: run, coarsen, store, continue.

The forced shallow-water model (:mod:`diffda.emulators.nature.shallow_water`, 64x128 Legendre-Gauss
grid, T42) is spun up, then stored every 6 hours on the WeatherBench 5.625 deg grid
(:data:`OUTPUT_GRID`, 32x64 cell centres) in the canonical form of
:mod:`diffda.emulators.dataio`:

- state ``height`` (free-surface height, m), ``u``, ``v`` (m s-1), ``tracer`` (kg kg-1);
- forcing ``height_eq`` (m, the relaxation target of ``height``;
  :data:`~diffda.emulators.nature.fields.FORCING_VARIABLES`);
- static ``orography`` (m) and ``land_sea_mask`` (1 = land);
- per-variable climatology (area-weighted mean and std) in each variable's attributes.

Coarsening ("spectral evaluation + area-weighted coarsening"): each model field is
evaluated spectrally (exactly, from its spherical-harmonic coefficients) at the cell
centres of the 64x128 WeatherBench grid and coarsened to 32x64 with
:func:`~diffda.core.grid.coarsen`, whose stencil is centred on the coarse labels, so
that each stored value is the area mean over the cell centred at the stored (lat, lon),
made by the same operator as every other coarse field of the system. Winds go through
``u cos(lat)``, ``v cos(lat)`` (smooth scalars on the sphere). The tracer is clipped at zero.

Forcing and static fields are pure functions of (time, point):
:func:`~diffda.emulators.nature.fields.forcing_fields` and
:func:`~diffda.emulators.nature.fields.static_fields` give them on any grid at any cftime
time, and reproduce the stored ones exactly on :data:`OUTPUT_GRID` at the stored times.

Long runs are written in chunks appended to a zarr store next to the output
(``PATH.partial.zarr``) with a model checkpoint after each chunk, so a killed run resumes
where it stopped and gives the same numbers as one that never stopped (:func:`run_nature`).
A finished run keeps its final state (:func:`restart_path`), from which
:func:`continuation` extends it. Its diagnostics are in
:mod:`diffda.emulators.nature.diagnostics`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cftime
import torch
import xarray as xr
from diffda.core.grid import Grid, coarsen_to
from diffda.core.io import atomic_write_bytes, fsync_path
from diffda.core.rng import torch_generator
from diffda.emulators import dataio
from diffda.emulators.nature.fields import (
    FORCING_VARIABLES,
    STATIC_VARIABLES,
    forcing_fields,
    static_fields,
)
from diffda.emulators.nature.forcing import ForcingConfig
from diffda.emulators.nature.shallow_water import (
    DAY,
    ShallowWaterConfig,
    ShallowWaterModel,
    SWState,
    synthesize,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

OUTPUT_GRID = Grid(32, 64)
STATE_VARIABLES: tuple[str, ...] = ("height", "u", "v", "tracer")
CALENDAR = "noleap"
EPOCH = cftime.DatetimeNoLeap(2000, 1, 1)
STORE_HOURS = 6.0
TIME_UNITS = "hours since 2000-01-01 00:00:00"


@dataclass(frozen=True, kw_only=True)
class NatureConfig:
    """What :func:`run_nature` runs. ``days`` is the stored period (after ``spinup_days``).

    ``start_index``: the first stored time, in 6-hourly steps after :data:`EPOCH` (0: a run
    from spin-up; > 0: the continuation of an earlier run from its final state, see
    :func:`run_nature`'s ``initial``)."""

    days: float
    spinup_days: float = 180.0
    seed: int = 0
    chunk_days: float = 30.0
    model: ShallowWaterConfig = field(default_factory=ShallowWaterConfig)
    start_index: int = 0

    def __post_init__(self) -> None:
        if self.start_index < 0:
            raise ValueError(f"start_index = {self.start_index} must be >= 0")
        if self.days <= 0 or self.spinup_days < 0 or self.chunk_days <= 0:
            raise ValueError(f"days = {self.days}, spinup_days = {self.spinup_days} and "
                             f"chunk_days = {self.chunk_days} must be positive")
        steps = STORE_HOURS * 3600.0 / self.model.dt_seconds
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"dt_seconds = {self.model.dt_seconds} must divide {STORE_HOURS} h")

    @property
    def n_times(self) -> int:
        return int(round(self.days * 24 / STORE_HOURS))


def time_of(seconds: float) -> cftime.datetime:
    """The noleap cftime ``seconds`` (rounded to whole seconds) after :data:`EPOCH`."""
    return EPOCH + datetime.timedelta(seconds=round(seconds))


# --------------------------------------------------------------------------- model -> output


class OutputMap:
    """Model spectral state -> stored fields on ``grid`` (cell centres, lat ascending).

    Evaluates ``height``, ``u cos``, ``v cos``, ``tracer`` spectrally at the cell centres of
    the grid twice as fine as ``grid`` and coarsens them with
    :func:`~diffda.core.grid.coarsen_to`, the area-weighted operator centred on the
    coarse labels that every other coarse field of the system uses.
    """

    def __init__(self, model: ShallowWaterModel, grid: Grid = OUTPUT_GRID) -> None:
        self.model = model
        self.grid = grid
        self.fine = Grid(grid.nlat * 2, grid.nlon * 2)
        cos_model = torch.cos(torch.deg2rad(model.lat_deg)).to(model.dtype)[:, None]
        self.cos_model = cos_model
        self.cos_fine = torch.cos(torch.deg2rad(torch.as_tensor(self.fine.lat)))[:, None]

    def __call__(self, spec: Tensor) -> Tensor:
        """``(B, 4, L, M)`` -> ``(B, 4, nlat, nlon)`` float32 (height, u, v, tracer)."""
        m = self.model
        g = m.grid_fields(spec)  # (B, 4, nlat_m, nlon_m) north->south, tracer clipped
        g = torch.stack([g[:, 0], g[:, 1] * self.cos_model, g[:, 2] * self.cos_model, g[:, 3]], 1)
        coeffs = m.to_spec(g).to(torch.complex128)
        fine = synthesize(coeffs, self.fine.lat, self.fine.nlon, 0.0)
        fine = torch.stack([fine[:, 0], fine[:, 1] / self.cos_fine, fine[:, 2] / self.cos_fine,
                            fine[:, 3].clamp_min(0.0)], 1)
        return coarsen_to(fine, self.grid).to(torch.float32)


# --------------------------------------------------------------------------- checkpoints


CHECKPOINT_FORMAT = "diffda-nature-checkpoint-v2"


def save_checkpoint(path: Path, state: SWState, meta: dict, pending: Tensor | None) -> None:
    """Write the model state (+ the chunk of output not yet appended) atomically, as one file.

    Tensors and metadata (JSON, in the safetensors header) go to ``path`` together (no
    pickled code), so a kill can never leave the state of one time beside the metadata of
    another; the file is flushed to disk with its folder. An older checkpoint's separate
    ``path.json`` is removed once this is written.
    """
    tensors = {"spec_real": state.spec.real.contiguous(), "spec_imag": state.spec.imag.contiguous()}
    for i, h in enumerate(state.history):
        tensors[f"hist{i}_real"] = h.real.contiguous()
        tensors[f"hist{i}_imag"] = h.imag.contiguous()
    if pending is not None:
        tensors["pending"] = pending.contiguous()
    record = {**meta, "seconds": state.seconds, "n_history": len(state.history)}
    header = {"format": CHECKPOINT_FORMAT, "meta": json.dumps(record)}
    atomic_write_bytes(path, lambda tmp: save_file(tensors, str(tmp), metadata=header),
                       sync_folder=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def load_checkpoint(path: Path) -> tuple[SWState, dict, Tensor | None]:
    """Read :func:`save_checkpoint`'s file: ``(state, meta, pending)``. A checkpoint of the
    earlier two-file form (``path`` + ``path.json``) is read if its parts agree."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    t = load_file(path)
    if header.get("format") == CHECKPOINT_FORMAT:
        meta = json.loads(header["meta"])
    else:  # the earlier form: metadata beside the tensors
        side = path.with_suffix(".json")
        if not side.is_file():
            raise ValueError(f"{path}: a nature-run checkpoint without its metadata "
                             f"({side} is missing)")
        meta = json.loads(side.read_text())
    n_hist = sum(1 for k in t if k.startswith("hist") and k.endswith("_real"))
    if n_hist != meta.get("n_history"):
        raise ValueError(f"{path}: holds {n_hist} history states, its metadata says "
                         f"{meta.get('n_history')}: the two were written at different times")
    spec = torch.complex(t["spec_real"], t["spec_imag"])
    hist = [torch.complex(t[f"hist{i}_real"], t[f"hist{i}_imag"])
            for i in range(meta["n_history"])]
    return SWState(spec, float(meta["seconds"]), hist), meta, t.get("pending")


# --------------------------------------------------------------------------- dataset


def chunk_dataset(fields: Tensor, start_index: int, grid: Grid = OUTPUT_GRID) -> xr.Dataset:
    """Canonical dataset of stored fields ``(time, 4, nlat, nlon)`` whose first time is the
    ``start_index``-th 6-hourly time after :data:`EPOCH`, with the forcing at those times."""
    times = [time_of((start_index + i) * STORE_HOURS * 3600.0) for i in range(len(fields))]
    forcing = forcing_fields(times, grid)
    data = {name: fields[:, i].numpy() for i, name in enumerate(STATE_VARIABLES)}
    data.update({name: forcing[:, i].numpy() for i, name in enumerate(FORCING_VARIABLES)})
    return dataio.make_dataset(data, times, grid)


def static_dataset(grid: Grid = OUTPUT_GRID) -> xr.Dataset:
    st = static_fields(grid)
    return dataio.make_dataset({n: st[i].numpy() for i, n in enumerate(STATIC_VARIABLES)},
                               None, grid)


def _append(store: Path, ds: xr.Dataset, first: bool) -> None:
    if first:
        enc = {v: {"chunks": (16, *ds[v].shape[1:])} for v in ds.data_vars if "time" in ds[v].dims}
        ds.to_zarr(store, mode="w", zarr_format=3, encoding=enc, consolidated=False)
    else:
        ds.to_zarr(store, mode="a", append_dim="time", consolidated=False)


def _store_length(store: Path) -> int:
    if not store.exists():
        return 0
    return int(xr.open_zarr(store, consolidated=False).sizes["time"])


# --------------------------------------------------------------------------- the run


def run_nature(cfg: NatureConfig, out: Path, *, progress: bool = True,
               callback: Callable[[int, int], None] | None = None,
               initial: SWState | None = None) -> Path:
    """Run the nature run and write it to ``out`` (``.zarr`` or ``.nc``), resumably.

    ``initial``: a model state at time ``cfg.start_index`` x 6 h (the final state of an
    earlier run, :func:`restart_path`) to continue from instead of spinning up; the stirring
    is a function of time, so the continuation is what one longer run would have stored.

    Work goes to ``out.partial.zarr`` with a checkpoint ``out.checkpoint.safetensors`` after
    spin-up and after each ``chunk_days``; calling again with the same config continues from
    the last checkpoint. At the end the climatology is computed and stored, the store is
    moved (or converted, for netCDF) to ``out`` atomically and the partial files removed.
    Returns ``out``.
    """
    out = Path(out)
    if out.suffix not in (".zarr", ".nc"):
        raise ValueError(f"output path {out} must end in .zarr or .nc")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.zarr")
    ckpt = out.with_name(out.name + ".checkpoint.safetensors")
    config_record = json.dumps(asdict(cfg), sort_keys=True)
    model = ShallowWaterModel(cfg.model)
    if ckpt.exists():
        state, n_done = _resume(ckpt, partial, config_record)
    else:
        _check_start(cfg, initial)
        if partial.exists():
            shutil.rmtree(partial)
        state = initial if initial is not None else spin_up(cfg, model, "spin-up", progress,
                                                             unit="step")
        n_done = 0
        save_checkpoint(ckpt, state, {"config": config_record, "n_done": 0}, None)
    _store_chunks(cfg, model, state, n_done, ckpt, partial, config_record, progress, callback)
    finalize(partial, out)
    restart = restart_path(out)
    os.replace(ckpt, restart)  # one file (save_checkpoint): state and metadata move together
    restart.with_suffix(".json").unlink(missing_ok=True)  # an earlier form's metadata
    fsync_path(restart.parent)
    return out


def _resume(ckpt: Path, partial: Path, config_record: str) -> tuple[SWState, int]:
    """The state and number of stored times of an interrupted run, after finishing the
    append its checkpoint announced; refuses a checkpoint of another configuration."""
    state, meta, pending = load_checkpoint(ckpt)
    if meta["config"] != config_record:
        raise ValueError(f"{ckpt} was written by a different configuration; remove it "
                         f"and {partial} to start again")
    n_done = int(meta["n_done"])
    if pending is not None:  # finish the append that the checkpoint announced
        have = _store_length(partial)
        if have == n_done - len(pending):
            _append(partial, chunk_dataset(pending, have), first=have == 0)
        elif have != n_done:
            raise ValueError(f"{partial} has {have} times, checkpoint expects {n_done}")
        save_checkpoint(ckpt, state, {**meta}, None)
    return state, n_done


def _check_start(cfg: NatureConfig, initial: SWState | None) -> None:
    """Refuse an ``initial`` state that is not at ``cfg.start_index``, and a
    ``cfg.start_index`` without one."""
    if initial is not None:
        if abs(initial.seconds - cfg.start_index * STORE_HOURS * 3600.0) > 1e-3:
            raise ValueError(f"the initial state is at {time_of(initial.seconds)}, the run "
                             f"starts at {time_of(cfg.start_index * STORE_HOURS * 3600.0)}")
    elif cfg.start_index != 0:
        raise ValueError(f"start_index = {cfg.start_index} needs an initial state")


def spin_up(cfg: NatureConfig, model: ShallowWaterModel, desc: str, progress: bool,
            unit: str = "it") -> SWState:
    """The model state after ``cfg.spinup_days`` from the seeded initial state
    (``torch_generator(cfg.seed, "nature-initial")``): the first stored time of a run
    (``desc``, ``unit``: of the progress bar)."""
    from tqdm import tqdm

    state = model.initial_state(-cfg.spinup_days * DAY,
                                torch_generator(cfg.seed, "nature-initial"))
    n_spin = int(round(cfg.spinup_days * DAY / cfg.model.dt_seconds))
    with torch.no_grad():
        for _ in tqdm(range(n_spin), desc=desc, unit=unit, disable=not progress,
                      mininterval=2.0):
            state = model.step(state)
    return state


def _store_chunks(cfg: NatureConfig, model: ShallowWaterModel, state: SWState, n_done: int,
                  ckpt: Path, partial: Path, config_record: str, progress: bool,
                  callback: Callable[[int, int], None] | None) -> None:
    """Step the model from ``state`` (after ``n_done`` stored times) to the end of the run,
    appending every ``chunk_days`` of stored fields to ``partial`` with a checkpoint before
    (announcing the chunk) and after the append."""
    from tqdm import tqdm

    output = OutputMap(model)
    steps_per_store = int(round(STORE_HOURS * 3600.0 / cfg.model.dt_seconds))
    chunk_times = max(1, int(round(cfg.chunk_days * 24 / STORE_HOURS)))
    n_total = cfg.n_times
    bar = tqdm(total=n_total, initial=n_done, desc="nature run", unit="x6h",
               disable=not progress, mininterval=2.0)
    buffer: list[Tensor] = []
    with torch.no_grad():
        while n_done + len(buffer) < n_total:
            index = cfg.start_index + n_done + len(buffer)
            if abs(state.seconds - index * STORE_HOURS * 3600.0) > 1e-3:
                raise RuntimeError(f"model time {state.seconds} s is not that of output {index}")
            if not torch.isfinite(state.spec).all():
                raise FloatingPointError(
                    f"nature run became non-finite at {time_of(state.seconds)}")
            buffer.append(output(state.spec)[0])
            bar.update(1)
            for _ in range(steps_per_store):
                state = model.step(state)
            if len(buffer) == chunk_times or n_done + len(buffer) == n_total:
                pending = torch.stack(buffer)
                meta = {"config": config_record, "n_done": n_done + len(buffer)}
                save_checkpoint(ckpt, state, meta, pending)
                _append(partial, chunk_dataset(pending, cfg.start_index + n_done),
                        first=n_done == 0)
                n_done += len(buffer)
                buffer = []
                save_checkpoint(ckpt, state, meta, None)
                if callback is not None:
                    callback(n_done, n_total)
    bar.close()


def restart_path(out: Path) -> Path:
    """Where a finished run keeps its final model state (safetensors + .json): the state
    after the last stored time, to extend the run or start twin experiments from."""
    return Path(out).with_name(Path(out).name + ".restart.safetensors")


def finalize(partial: Path, out: Path) -> None:
    """Add statics and climatology to ``partial`` and move/convert it to ``out``."""
    ds = xr.open_zarr(partial, consolidated=False, decode_times=dataio.TIME_CODER)
    static_dataset().to_zarr(partial, mode="a", consolidated=False)
    clim = dataio.climatology(ds, [*STATE_VARIABLES, *FORCING_VARIABLES])
    dataio.write_climatology_attrs(partial, clim)
    import warnings

    import zarr

    with warnings.catch_warnings():  # "consolidated metadata is not part of zarr v3 spec"
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(partial), zarr_format=3)
    if out.suffix == ".zarr":
        os.replace(partial, out)
    else:
        full = xr.open_zarr(partial, consolidated=False, decode_times=dataio.TIME_CODER).load()
        dataio.write_netcdf(full, out)
        shutil.rmtree(partial)


def config_from_record(record: str) -> NatureConfig:
    """The :class:`NatureConfig` of its JSON record (a checkpoint's ``config``, a stored
    dataset's ``nature_config`` attribute)."""
    prev = json.loads(record)
    model = dict(prev["model"])
    model["forcing"] = ForcingConfig(**model["forcing"])
    return NatureConfig(days=prev["days"], spinup_days=prev["spinup_days"], seed=prev["seed"],
                        chunk_days=prev["chunk_days"], model=ShallowWaterConfig(**model),
                        start_index=prev.get("start_index", 0))


#: The global attribute of a stored dataset that holds its nature run's configuration.
CONFIG_ATTR = "nature_config"


def config_record_of(data: Path, attrs: dict) -> str:
    """The JSON configuration of the nature run that made the dataset ``data``: its
    ``nature_config`` attribute (written by ``cycler subset``), else the final state kept
    beside a finished run (:func:`restart_path`)."""
    if CONFIG_ATTR in attrs:
        return str(attrs[CONFIG_ATTR])
    restart = restart_path(Path(data))
    if restart.exists():
        return str(load_checkpoint(restart)[1]["config"])
    raise ValueError(f"{data}: no '{CONFIG_ATTR}' attribute and no {restart.name} beside it: "
                     "the nature model that made these data is unknown (cut the data with "
                     "'cycler subset' from a finished nature run)")


def continuation(run: Path, days: float, chunk_days: float) -> tuple[NatureConfig, SWState]:
    """The config and initial state that continue the finished nature run ``run`` for
    ``days``: its model and seed, starting from its final state."""
    restart = restart_path(run)
    if not restart.exists():
        raise FileNotFoundError(f"{restart}: no final state of {run} to continue from "
                                "(written when a nature run finishes)")
    state, meta, _ = load_checkpoint(restart)
    prev = config_from_record(meta["config"])
    cfg = NatureConfig(days=days, spinup_days=prev.spinup_days, seed=prev.seed,
                       chunk_days=chunk_days, model=prev.model,
                       start_index=round(state.seconds / (STORE_HOURS * 3600.0)))
    return cfg, state


