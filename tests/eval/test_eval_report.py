"""HTML report: self-contained (every <img> a decodable PNG data URI), escaped, with every column."""

import base64
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
from helpers import CHROMIUM, browser_shows_every_image, parse_report  # noqa: E402
from ups.eval.plots import plot_error_curves
from ups.eval.report import write_report


def _parse(path):
    return parse_report(path)


EVAL = {
    "metrics": {"nrmse": 0.0123456, "corr_time": 40.0, "nrmse_per_step": [0.01, 0.02], "samples": 8},
    "baselines": {"persistence": {"nrmse": 1.27, "corr_time": 3.0}, "fno": {"nrmse": 0.015, "corr_time": 40.0}},
    "data": {"file": "burgers_test.hdf5", "split": "test", "samples": 8},
    "run": {"dir": "runs/demo", "stages": ["operator"]},
}
TTC = {"metrics": {"nrmse": 0.011, "corr_time": 40.0}, "evaluations": 320, "cost_ratio": 4.0}
CONFIG = "name: demo\nmodel:\n  name: upt\ndata:\n  pde: burgers1d\nnote: </pre><script>alert(1)</script>\n"


def _report(tmp_path, **kw):
    plot = plot_error_curves({"model": [0.01, 0.02], "persistence": [0.5, 1.0]}, tmp_path / "plots" / "err.png")
    args = {"eval_json": EVAL, "config_yaml": CONFIG, "plots": {"error per step": plot}, "ttc": TTC} | kw
    return write_report(tmp_path, **args)


def test_every_image_is_an_embedded_png(tmp_path):
    (tmp_path / "train_log.jsonl").write_text(
        json.dumps({"kind": "epoch", "stage": "operator", "epoch": 0, "loss": 1.0, "val_metric": 0.5}) + "\n")
    out = _report(tmp_path)
    assert out == tmp_path / "report.html"
    imgs = _parse(out).imgs
    assert [i["alt"] for i in imgs] == ["training curves", "error per step"]
    for img in imgs:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True))) as im:
            im.verify()


def test_text_is_escaped_and_every_column_is_there(tmp_path):
    parsed = _parse(_report(tmp_path))
    assert "script" not in parsed.tags
    text = (tmp_path / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for header in ("model", "model + TTC", "persistence", "fno", "evaluations", "cost_ratio"):
        assert header in parsed.cells, header
    assert "0.01235" in parsed.cells and "1.27" in parsed.cells and "320" in parsed.cells
    assert "nrmse_per_step" not in parsed.cells  # per-step lists are plotted, not tabulated
    assert "persistence / model = 102.9" in text


def test_missing_plot_is_a_note_not_a_broken_image(tmp_path):
    (tmp_path / "fake.png").write_text("not a png")
    out = _report(tmp_path, plots={"gone": tmp_path / "nope.png", "fake": tmp_path / "fake.png"}, ttc=None)
    parsed = _parse(out)
    assert parsed.imgs == []
    text = out.read_text()
    assert 'plot "gone" is missing' in text and 'plot "fake" is not a PNG or GIF' in text
    assert "model + TTC" not in parsed.cells  # eval_json has no "ttc" either


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium")
def test_headless_browser_shows_every_image(tmp_path):
    assert browser_shows_every_image(_report(tmp_path), tmp_path)


def test_variants_are_side_by_side_with_their_cost_per_step(tmp_path):
    from ups.eval.report import variant_columns

    variants = {"none": {"nrmse": 0.12, "nrmse_one_step": 0.03, "corr_time": 40.0, "valid_time": 40.0,
                         "conservation_gap": 0.01, "per_step_ms": 1.5},
                "multi": {"nrmse": 0.10, "nrmse_one_step": 0.02, "corr_time": 40.0, "valid_time": 40.0,
                          "conservation_gap": 0.01, "per_step_ms": 2.5}}
    ttc = {**TTC, "corrector": "multi", "candidates": 4, "per_step_ms": 11.0}
    cols = variant_columns({**EVAL, "variants": variants}, ttc)
    assert list(cols) == ["none", "multi", "multi + TTC (best of 4)"]
    assert cols["multi + TTC (best of 4)"]["per_step_ms"] == pytest.approx(11.0)
    html = _report(tmp_path, eval_json={**EVAL, "variants": variants}, ttc=ttc).read_text()
    assert "<h2>Variants</h2>" in html and "per_step_ms" in html and "multi + TTC (best of 4)" in html
    assert "<h2>Variants</h2>" not in _report(tmp_path / "plain").read_text()  # no variants: no section
