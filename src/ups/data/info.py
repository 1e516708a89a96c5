"""What ``ups data info FILE`` reports: layout, attributes, coordinates, value range, NaN/inf samples.

One streamed pass over the file (:func:`ups.data.reader.scan_file`), a few samples at a time.
"""

from __future__ import annotations

from pathlib import Path

from ups.data.reader import TrajectoryFile, scan_file
from ups.errors import DataError


def file_info(path: str | Path, *, chunk: int | None = None, max_listed: int = 10) -> dict:
    """Everything ``ups data info`` prints: layout, attributes, coordinates, value range, bad samples."""
    file = TrajectoryFile(path)
    scan = scan_file(file, chunk=chunk)
    try:
        params: dict | str = file.params
    except DataError as err:
        params = f"unknown ({err})"
    coords = {name: {"n": len(a), "min": float(a.min()), "max": float(a.max())}
              for name, a in zip(("x", "y"), file.axes)}
    coords["t"] = {"n": len(file.t), "min": float(file.t.min()), "max": float(file.t.max()), "dt": file.dt}
    return {
        "path": str(file.path), "shape": list(file.shape), "dtype": str(file.dtype),
        "chunks": list(file.chunks) if file.chunks else None, "n_samples": file.n_samples,
        "n_frames": file.n_frames, "spatial_shape": list(file.spatial_shape), "n_channels": file.n_channels,
        "pde": file.pde, "params": params, "attrs": file.attrs, "coordinates": coords,
        "values": {"min": scan.min, "max": scan.max, "mean": scan.mean},
        "nonfinite": {"values": scan.n_nonfinite, "samples": len(scan.bad_samples),
                      "first_samples": scan.bad_samples[:max_listed]},
    }


def format_info(info: dict) -> str:
    """``file_info`` as a few readable lines."""
    c = info["coordinates"]
    lines = [f"file        {info['path']}",
             f"tensor      {info['shape']} {info['dtype']} (N={info['n_samples']}, T={info['n_frames']}, "
             f"spatial={info['spatial_shape']}, C={info['n_channels']}; chunks={info['chunks']})",
             f"pde         {info['pde']}   params {info['params']}"]
    for name in ("x", "y"):
        if name in c:
            lines.append(f"{name}-coord     {c[name]['n']} points in [{c[name]['min']:.6g}, {c[name]['max']:.6g}]")
    lines.append(f"t-coord     {c['t']['n']} frames in [{c['t']['min']:.6g}, {c['t']['max']:.6g}], "
                 f"dt={c['t']['dt']:.6g}")
    v = info["values"]
    for ch, (lo, hi, mean) in enumerate(zip(v["min"], v["max"], v["mean"])):
        if lo is None:
            lines.append(f"values[{ch}]   no finite value")
        else:
            lines.append(f"values[{ch}]   min {lo:.6g}  max {hi:.6g}  mean {mean:.6g}")
    bad = info["nonfinite"]
    if bad["samples"]:
        more = " ..." if bad["samples"] > len(bad["first_samples"]) else ""
        lines.append(f"NaN/inf     {bad['values']} values in {bad['samples']} samples: "
                     f"{', '.join(map(str, bad['first_samples']))}{more}")
    else:
        lines.append("NaN/inf     none")
    for key, value in info["attrs"].items():
        lines.append(f"attr        {key} = {value}")
    if bad["samples"]:
        lines.append(refusal(info))
    return "\n".join(lines)


def refusal(info: dict) -> str:
    """The verdict on a file with NaN/inf: training refuses it (naming the first bad sample)."""
    bad = info["nonfinite"]
    return (f"refused: ups train stops at sample {bad['first_samples'][0]} of {info['path']} (samples with "
            f"NaN/inf: {bad['samples']}); regenerate the file or drop those samples")
