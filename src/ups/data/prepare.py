"""From a data config to ready sources: generate missing files, open splits, normalise, describe.

``prepare_data(exp.data)`` is what training, evaluation and the pipeline call first. It generates the
files a config names when they are missing and the config has a ``generate`` section (each split with
its own seed), opens the splits lazily, and returns them with the metadata. The normaliser is fitted
on the train split only (``fit_normalizer``) or loaded from a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from ups.config import SPLITS, DataConfig, ExperimentConfig, Split
from ups.data.datasets import WindowDataset, build_metadata, make_loader
from ups.data.metadata import DatasetMetadata
from ups.data.mixture import MixtureBundle, MixtureLayout, check_members, member_loader, mixture_metadata
from ups.data.normalization import MixtureNormalizer, Normalizer
from ups.data.reader import SplitSource, open_split
from ups.errors import DataError


@dataclass
class DataBundle:
    """Open splits of one data config plus the metadata (the single source of shapes)."""

    data_cfg: DataConfig
    splits: dict[str, SplitSource]
    meta: DatasetMetadata

    def windows(self, split: str, *, window: int | None, normalizer: Normalizer | None,
                start: int = 0, train: bool = False, seed: int = 0) -> WindowDataset:
        """Windows of ``window`` frames (None: whole trajectories from ``start``) of one split."""
        return WindowDataset(
            self.splits[split], window=window, normalizer=normalizer,
            temporal_stride=self.data_cfg.temporal_stride, spatial_stride=self.data_cfg.spatial_stride,
            random_offset=train and self.data_cfg.random_offset and self.data_cfg.spatial_stride > 1,
            start=start, seed=seed, point_subset=self._point_subset() if train else None,
            cache_mb=self.data_cfg.cache_mb,
        )

    def _point_subset(self) -> tuple[float, int] | None:
        ps = self.data_cfg.point_subset
        return None if ps is None else (ps.fraction, ps.min_points)


def _files(value: str | list[str] | None) -> list[Path]:
    if value is None:
        return []
    return [Path(v) for v in ([value] if isinstance(value, str) else value)]


def ensure_data(data_cfg: DataConfig, *, progress: bool = True) -> list[Path]:
    """Generate the split files the config names but that do not exist yet; return those written."""
    if data_cfg.pdebench_file is not None:
        missing = [p for p in _files(data_cfg.pdebench_file) if not p.is_file()]
        if missing:
            raise DataError(f"PDEBench file not found: {missing[0]} (download it or fix data.pdebench_file)")
        return []
    written = []
    for split in SPLITS:
        for path in _files(getattr(data_cfg, split)):
            if path.is_file():
                continue
            if data_cfg.generate is None:
                raise DataError(f"data file not found: {path} (data.{split}); generate it with "
                                f"`ups data generate` or add a data.generate section")
            written.append(_generate_split(data_cfg, split, path, progress=progress))
    return written


def _generate_split(data_cfg: DataConfig, split: Split, path: Path, *, progress: bool) -> Path:
    from ups.data.generate import generate_dataset

    gen = data_cfg.generate
    assert gen is not None
    if split not in gen.samples or split not in gen.seeds:
        raise DataError(f"data.generate has no samples/seed for split '{split}' (add samples.{split} and "
                        f"seeds.{split})")
    return generate_dataset(
        pde=data_cfg.pde, params=dict(gen.params), samples=gen.samples[split], seed=gen.seeds[split], out=path,
        resolution=gen.resolution, frames=gen.frames_for(split), t_end=gen.t_end_for(split),
        batch_size=gen.batch_size, progress=progress, solver=dict(gen.solver),
    )


def prepare_data(data_cfg: DataConfig, *, splits: tuple[str, ...] = SPLITS, generate: bool = True,
                 progress: bool = True) -> DataBundle | MixtureBundle:
    """Open the named splits (generating missing files first when allowed) and build the metadata.
    With ``data.mixture``: every member's, in one :class:`ups.data.mixture.MixtureBundle`."""
    if data_cfg.mixture is not None:
        return prepare_mixture(data_cfg, splits=splits, generate=generate, progress=progress)
    if generate:
        ensure_data(data_cfg, progress=progress)
    opened = {s: open_split(data_cfg, s) for s in splits}
    meta = build_metadata(next(iter(opened.values())), data_cfg)
    return DataBundle(data_cfg=data_cfg, splits=opened, meta=meta)


def prepare_mixture(data_cfg: DataConfig, *, splits: tuple[str, ...], generate: bool = True, progress: bool = True,
                    layout: MixtureLayout | None = None) -> MixtureBundle:
    """Open (and generate when allowed) every member of ``data_cfg.mixture``; ``layout``: a trained run's
    (evaluation: the members may then be any subset of its members)."""
    if data_cfg.mixture is None:
        raise DataError("data.mixture is not set")
    members = {m.pde: prepare_data(m, splits=splits, generate=generate, progress=progress)
               for m in data_cfg.mixture.members}
    metas = {name: b.meta for name, b in members.items()}
    check_members(metas)
    if layout is None:
        layout = MixtureLayout.of(metas)
    for name, meta in metas.items():
        layout.index(name)
        if tuple(meta.param_names) != layout.member_params[name]:
            raise DataError(f"mixture member {name} has parameters {list(meta.param_names)} but the model was "
                            f"trained with {list(layout.member_params[name])}")
        for source in members[name].splits.values():  # every file's parameters encode (log needs > 0)
            for file in source.files:
                layout.encode_params(name, file.params_array(source.param_names))
    return MixtureBundle(data_cfg=data_cfg, members=members, layout=layout,
                         meta=mixture_metadata(metas, layout))


def fit_normalizer(bundle: DataBundle | MixtureBundle) -> Normalizer | MixtureNormalizer:
    """Per-channel statistics from the train split alone (a mixture: each member's from its own)."""
    if isinstance(bundle, MixtureBundle):
        return MixtureNormalizer(members={name: fit_normalizer(b) for name, b in bundle.members.items()})
    if "train" not in bundle.splits:
        raise DataError("normalisation statistics come from the train split; open it first")
    return Normalizer.fit(bundle.splits["train"], spatial_stride=bundle.data_cfg.spatial_stride,
                          temporal_stride=bundle.data_cfg.temporal_stride)


# ------------------------------------------------------------------------------------ loaders
# The one place loaders are built from a config: ``ups train``, ``ups eval``, the benchmarks and tests.
def training_loader(bundle: DataBundle, exp: ExperimentConfig, *, normalizer: Normalizer, window: int | None,
                    seed: int) -> DataLoader:
    """Shuffled training windows of ``window`` frames (random sub-cell offsets and early-frame oversampling
    as ``exp.data`` says), the order seeded by ``seed``. ``data.batch_size`` is the global batch: under
    ``torch.distributed`` each process loads its shard of every one (the same order at any process count)."""
    ds = bundle.windows("train", window=window, normalizer=normalizer, train=True, seed=seed)
    data_cfg = exp.data
    return make_loader(ds, batch_size=data_cfg.batch_size, shuffle=True, seed=seed, num_workers=data_cfg.num_workers,
                       drop_last=len(ds) > data_cfg.batch_size, early_oversample=data_cfg.early_oversample,
                       early_frames=data_cfg.early_frames, distributed=True)


def trajectory_loader(bundle: DataBundle, exp: ExperimentConfig, split: str, *, normalizer: Normalizer,
                      window: int | None = None) -> DataLoader:
    """``split`` in order, ``eval.batch_size`` per batch: whole trajectories from ``eval.rollout_start``
    (``window=None``, what validation rollouts and evaluation score) or windows of ``window`` frames."""
    ds = bundle.windows(split, window=window, normalizer=normalizer,
                        start=exp.eval.rollout_start if window is None else 0)
    if isinstance(bundle, MixtureBundle):  # members' trajectories differ in length: never batched together
        return member_loader(ds, batch_size=exp.eval.batch_size)
    return make_loader(ds, batch_size=exp.eval.batch_size, shuffle=False, seed=0)


def stage_loaders(bundle: DataBundle, exp: ExperimentConfig, *, normalizer: Normalizer, train_window: int | None,
                  val_window: int | None, seed: int) -> tuple[DataLoader, DataLoader]:
    """(training loader, validation loader) of one stage, from its ``train_window``/``val_window``."""
    return (training_loader(bundle, exp, normalizer=normalizer, window=train_window, seed=seed),
            trajectory_loader(bundle, exp, "val", normalizer=normalizer, window=val_window))
