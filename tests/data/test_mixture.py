"""Data mixtures (``data.mixture``): the common layout of mixed batches, the one-hot PDE identity, per-member
normalisation and its exact inverse, PDE balancing, and one-line errors for members that cannot share a model.

Three small synthetic members with the three PDEs' names, domains and parameters: Burgers on [0, 1) (32
cells, stride 2), KS on [0, 64) (16 points) and diffusion-reaction on [0, 1) (32 cells, stride 2, other
frame step), each with values of its own scale so that per-member statistics differ.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import cell_centres, random_fields, write_ups_file
from ups.config import DataConfig, load_config
from ups.data.mixture import MixtureDataset, MixtureLayout
from ups.data.normalization import MixtureNormalizer, Normalizer, normalizer_from_dict
from ups.data.prepare import fit_normalizer, prepare_data, training_loader, trajectory_loader
from ups.data.reader import TrajectoryFile
from ups.errors import ConfigError, DataError

MEMBERS = {  # name: (points, domain hi, frames, t_end, params, stride, loc, scale, samples)
    "burgers1d": (32, 1.0, 9, 0.8, {"nu": 0.01}, 2, 0.5, 0.3, 3),
    "ks1d": (16, 64.0, 12, 2.2, {"length": 64.0}, 1, 0.0, 2.0, 2),
    "diffusion_reaction1d": (32, 1.0, 9, 0.08, {"nu": 0.5, "rho": 1.0}, 2, 0.4, 0.1, 4),
}
NAMES = tuple(MEMBERS)


def _write_members(root: Path, *, channels: dict[str, int] | None = None) -> list[dict]:
    members = []
    for k, (name, (points, hi, frames, t_end, params, stride, loc, scale, n)) in enumerate(MEMBERS.items()):
        c = (channels or {}).get(name)
        paths = {}
        for j, split in enumerate(("train", "val", "test")):
            u = random_fields(n, frames, points, channels=c, seed=10 * k + j, loc=loc, scale=scale)
            paths[split] = str(write_ups_file(root / name / f"{split}.h5", u, pde=name, params=params, t_end=t_end,
                                              x=cell_centres(points, 0.0, hi)))
        members.append({"pde": name, **paths, "spatial_stride": stride})
    return members


def _data_cfg(members: list[dict], **extra) -> DataConfig:
    return DataConfig(batch_size=4, mixture={"members": members, **extra})


@pytest.fixture()
def bundle(tmp_path):
    return prepare_data(_data_cfg(_write_members(tmp_path)), generate=False)


def test_metadata_describes_the_union(bundle):
    meta = bundle.meta
    assert meta.param_names == ("nu", "length", "rho", "pde=burgers1d", "pde=ks1d", "pde=diffusion_reaction1d")
    assert meta.n_params == 6 and meta.spatial_shape == (16,) and meta.n_channels == 1
    assert meta.domain == ((0.0, 1.0),) and meta.pde == "mixture"
    assert math.isclose(meta.dt, 0.01, rel_tol=1e-6)  # the smallest frame step (diffusion-reaction 0.08 / 8)
    layout = MixtureLayout.from_meta(meta)
    assert layout.names == NAMES and layout.domains["ks1d"] == ((0.0, 64.0),)


def test_mixed_batch_shapes_coordinates_and_identity(bundle):
    norm = fit_normalizer(bundle)
    exp = load_config(None, ["data.batch_size=64"])
    batch = next(iter(training_loader(bundle, exp, normalizer=norm, window=3, seed=0)))
    b = batch["u"].shape[0]
    assert batch["u"].shape == (b, 3, 16, 1) and batch["coords"].shape == (b, 16, 1)
    assert batch["params"].shape == (b, 6) and batch["member"].shape == (b,) and batch["dt"].shape == (b,)
    assert set(batch["member"].tolist()) == {0, 1, 2}  # one batch mixes the PDEs
    expected = {0: [math.log(0.01), 0.0, 0.0, 1.0, 0.0, 0.0], 1: [0.0, math.log(64.0), 0.0, 0.0, 1.0, 0.0],
                2: [math.log(0.5), 0.0, 0.0, 0.0, 0.0, 1.0]}  # log(rho = 1) = 0
    dts = {0: 0.1, 1: 0.2, 2: 0.01}  # each member's own physical frame step
    for params, member, dt, coords in zip(batch["params"], batch["member"], batch["dt"], batch["coords"]):
        m = int(member)
        torch.testing.assert_close(params, torch.tensor(expected[m]))
        assert math.isclose(float(dt), dts[m], rel_tol=1e-5)
        assert float(coords.min()) >= 0.0 and float(coords.max()) < 1.0
    ks = batch["coords"][batch["member"] == 1]  # KS: cell centres of [0, 64) mapped onto [0, 1)
    torch.testing.assert_close(ks[0, :, 0], torch.tensor(cell_centres(16, 0.0, 64.0) / 64.0, dtype=torch.float32))


def test_per_member_denormalisation_inverts_the_normalisation(bundle):
    norm = fit_normalizer(bundle)
    assert isinstance(norm, MixtureNormalizer)
    for name, member in bundle.members.items():  # each member's statistics come from its own train split
        stride = member.data_cfg.spatial_stride
        assert norm.member(name) == Normalizer.fit(member.splits["train"], spatial_stride=stride)
    exp = load_config(None, ["eval.batch_size=8"])
    for batch in trajectory_loader(bundle, exp, "val", normalizer=norm):
        name = NAMES[int(batch["member"][0])]
        stride = MEMBERS[name][5]
        file = TrajectoryFile(bundle.members[name].splits["val"].ref.path)
        raw = torch.stack([torch.from_numpy(file.read(int(s), spatial_stride=stride)) for s in batch["sample"]])
        torch.testing.assert_close(norm.denormalize(batch["u"], member=batch["member"]), raw, rtol=1e-5, atol=1e-5)
    x = torch.randn(5, 4, 16, 1, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1, 1, 0])
    torch.testing.assert_close(norm.denormalize(norm.normalize(x, member=ids), member=ids), x)
    assert normalizer_from_dict(norm.to_dict()) == norm


def test_mixture_normaliser_needs_the_member(bundle):
    norm = fit_normalizer(bundle)
    with pytest.raises(DataError, match="member="):
        norm.denormalize(torch.zeros(2, 3, 1))
    with pytest.raises(DataError, match="do not fit"):
        norm.denormalize(torch.zeros(2, 3, 1), member=torch.tensor([0, 3]))


def test_pde_balance_draws_every_member_equally(bundle):
    norm = fit_normalizer(bundle)
    ds = bundle.windows("train", window=2, normalizer=norm, train=True)
    assert isinstance(ds, MixtureDataset)
    largest = max(len(d) for d in ds.members.values())  # ks1d: 2 samples x 11 windows = 22
    members = [ds[i]["member"] for i in range(len(ds))]
    assert len(ds) == 3 * largest and all(members.count(k) == largest for k in range(3))
    seen = {(ds[i]["member"], ds[i]["sample"], ds[i]["t0"]) for i in range(len(ds))}
    assert len(seen) == sum(len(d) for d in ds.members.values())  # every window of every member is drawn
    starts = ds.window_starts()  # what early oversampling weights
    assert starts.tolist() == [ds[i]["t0"] for i in range(len(ds))]
    plain = prepare_data(bundle.data_cfg.model_copy(update={"mixture": bundle.data_cfg.mixture.model_copy(
        update={"balance": "windows"})}), generate=False).windows("train", window=2, normalizer=norm, train=True)
    assert len(plain) == sum(len(d) for d in ds.members.values())


def test_members_with_other_channel_counts_are_one_line(tmp_path):
    members = _write_members(tmp_path, channels={"ks1d": 2})
    with pytest.raises(DataError, match=r"differ in channels: burgers1d 1, ks1d 2, diffusion_reaction1d 1"):
        prepare_data(_data_cfg(members), generate=False)


def test_members_with_other_point_counts_are_one_line(tmp_path):
    members = _write_members(tmp_path)
    members[0]["spatial_stride"] = 4  # 32 cells every 4th: 8 points, the others 16
    with pytest.raises(DataError, match=r"points per sample after spatial_stride: burgers1d 8, ks1d 16.*agree"):
        prepare_data(_data_cfg(members), generate=False)


@pytest.mark.parametrize("data,message", [
    ({"mixture": {"members": [{"pde": "ks1d"}, {"pde": "ks1d"}]}}, "one member per PDE"),
    ({"mixture": {"members": [{"pde": "ks1d"}]}}, "at least 2"),
    ({"train": "a.h5", "mixture": {"members": [{"pde": "ks1d"}, {"pde": "burgers1d"}]}}, "into the members"),
    ({"mixture": {"members": [{"pde": "ks1d", "mixture": {"members": [{"pde": "a"}, {"pde": "b"}]}},
                              {"pde": "burgers1d"}]}}, "holds a mixture itself"),
])
def test_bad_mixture_configs_are_one_line(data, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [f"data={data}"])
    assert "\n" not in str(err.value)


def test_mixture_needs_identity_parameters_and_mixture_stages():
    members = "{members: [{pde: ks1d}, {pde: burgers1d}]}"
    with pytest.raises(ConfigError, match="param_transform=identity"):
        load_config(None, [f"data.mixture={members}", "stages.operator={}"])
    with pytest.raises(ConfigError, match="stage 'diff_residual' cannot train on a data mixture"):
        load_config(None, [f"data.mixture={members}", "model.params.param_transform=identity",
                           "stages={operator: {}, diff_residual: {}}"])


def test_parameters_must_be_positive_for_the_log(tmp_path):
    members = _write_members(tmp_path)
    u = random_fields(2, 12, 16, seed=1)
    for split in ("train", "val", "test"):
        write_ups_file(members[1][split], u, pde="ks1d", params={"length": -1.0}, t_end=2.2,
                       x=cell_centres(16, 0.0, 64.0))
    with pytest.raises(DataError, match="mixture member ks1d: parameter length=-1.0 must be > 0"):
        prepare_data(_data_cfg(members), generate=False)
