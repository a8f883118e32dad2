"""The benchmark suite (``benchmarks/run_all.py``) and the docs figures (``benchmarks/figures.py``).

Offline and fast: the marker rendering, the regression report, ``--render-only`` on a small
synthetic all.json (valid PNG plots), carrying un-runnable benchmarks over, and one figure strip
drawn with a tiny random CLIP. Nothing here runs a benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import run_all

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()


# ----------------------------------------------------------------------------- markers
PAGE = """# Title

Prose before, with a quoted marker `<!-- bench:js_kernel -->` in a sentence.

<!-- bench:first -->
old figures 1.23 s
<!-- /bench:first -->

Prose between.

<!-- bench:second -->
<!-- /bench:second -->

<!-- other:first -->
belongs to another renderer
<!-- /other:first -->

Prose after.
"""


def test_markers_replace_only_the_text_between_them_and_rendering_is_idempotent():
    sections = {"first": "| a |\n|---|\n| 1 |", "second": "new text"}
    once = run_all.render_markers(PAGE, sections)
    assert "old figures" not in once
    assert "<!-- bench:first -->\n\n| a |\n|---|\n| 1 |\n\n<!-- /bench:first -->" in once
    assert "<!-- bench:second -->\n\nnew text\n\n<!-- /bench:second -->" in once
    outside = [part.split("<!-- /bench:")[-1] for part in once.split("<!-- bench:")]
    assert outside == [part.split("<!-- /bench:")[-1] for part in PAGE.split("<!-- bench:")]  # prose untouched
    assert "belongs to another renderer" in once  # other prefixes are another script's
    assert run_all.render_markers(once, sections) == once
    again = run_all.render_markers(once, {**sections, "second": "changed"})
    assert "changed" in again and "new text" not in again


def test_markers_refuse_unknown_names_and_unclosed_markers():
    with pytest.raises(ValueError, match="no renderer"):
        run_all.render_markers(PAGE, {"first": "x"})
    with pytest.raises(ValueError, match="has no"):
        run_all.render_markers("<!-- bench:first -->\ntext\n", {"first": "x"})


def test_the_pages_have_a_renderer_for_every_marker():
    names = set(run_all.sections({}))
    for page in run_all.PAGES:
        text = page.read_text(encoding="utf-8")
        found = set(run_all._MARKER.findall(text))
        assert found, page
        assert {n for p, n in found if p == "bench"} <= names, page
        run_all.render_markers(text, run_all.sections({}))  # renders without raising


def test_the_committed_pages_are_rendered_from_the_committed_all_json():
    """README and docs/benchmarks.md show what all.json holds: no figure edited by hand."""
    data = run_all.load_json(run_all.ALL_JSON)
    if data is None:
        pytest.skip("no benchmarks/results/all.json yet")
    rendered = run_all.sections(data)
    for page in run_all.PAGES:
        text = page.read_text(encoding="utf-8")
        assert run_all.render_markers(text, rendered) == text, f"{page.name}: run python benchmarks/run_all.py --render-only"


def test_every_benchmark_script_is_in_the_suite():
    assert run_all.unlisted_scripts() == []
    for bench in run_all.BENCHMARKS:
        assert (run_all.HERE / bench.script).is_file(), bench.script


# ----------------------------------------------------------------------------- regression report
def _suite(medians: dict[str, float], status: str = "measured") -> dict:
    entry = {"status": status, "date": "2026-01-01T00:00:00+00:00", "medians": medians, "result": {}}
    return {"machine": {"cpu": "test CPU", "cores": 2, "torch": "2.0"}, "benchmarks": {"bench": entry}}


def test_regression_report_flags_a_2x_slowdown_and_not_a_5_percent_change():
    old = _suite({"slow (s)": 1.0, "steady (s)": 1.0, "tiny (ms)": 0.1, "rss (MB)": 1000.0})
    new = _suite({"slow (s)": 2.0, "steady (s)": 1.05, "tiny (ms)": 0.3, "rss (MB)": 1010.0})
    flagged, compared = run_all.changes(new, old, 0.2)
    assert [c.metric for c in flagged] == ["slow (s)"]  # 0.1 -> 0.3 ms is under the noise floor
    assert compared == {"bench": 4}
    report = run_all.regression_report(new, old, 0.2, "test")
    assert "1 of 4 medians beyond ±20%" in report
    assert "slow (s)" in report and "+100%" in report and "slower" in report
    assert "steady (s)" not in report


def test_regression_report_skips_what_was_not_re_measured():
    old = _suite({"slow (s)": 1.0})
    new = _suite({"slow (s)": 5.0}, status="not re-measured")
    new["benchmarks"]["bench"]["reason"] = "no CUDA device"
    assert run_all.changes(new, old, 0.2) == ([], {})
    report = run_all.regression_report(new, old, 0.2, "test")
    assert "not re-measured: no CUDA device (kept from 2026-01-01)" in report


def test_a_skipped_benchmark_keeps_its_result_and_original_date():
    previous = {"benchmarks": {"gpu": {"status": "measured", "date": "2025-11-25T23:14:36+00:00",
                                       "medians": {"x (s)": 1.0}, "result": {"results": []}}}}  # fmt: skip
    entry = run_all.carried(previous, run_all.BY_NAME["gpu"], "no CUDA device")
    assert entry["status"] == "not re-measured" and entry["reason"] == "no CUDA device"
    assert entry["date"] == "2025-11-25T23:14:36+00:00" and entry["medians"] == {"x (s)": 1.0}


# ----------------------------------------------------------------------------- --render-only
def _js_row(n: int, k: int) -> dict:
    scale = n * n * k / 1e9
    return {
        "cdclip": {"N": n, "K": k, "backend": "native", "seconds": scale, "peak_mib_over_inputs": n * n * 4 / 2**20,
                   "output_mib": n * n * 4 / 2**20, "max_abs_err_vs_scipy": 5e-7},
        "cdclip-torch": {"N": n, "K": k, "seconds": 3 * scale, "peak_mib_over_inputs": 3 * n * n * 4 / 2**20},
        "scipy": {"N": n, "K": k, "seconds": 80 * scale},
        "naive": {"N": n, "K": k, "seconds": 100 * scale, "peak_mib_over_inputs": n * n * k * 12 / 2**20},
        "log-floor": {"N": n, "K": k, "seconds": 2 * scale},
        "kernel-log-floor": {"N": n, "K": k, "seconds": 0.9 * scale},
    }  # fmt: skip


def _synthetic_all() -> dict:
    stages = {"input": "352x512", "clip_forward_s": 1.0, "gradcam_s": 0.1, "attn_refine_s": 0.01,
              "cda_refine_s": 0.03, "baseline_total_s": 1.11, "cda_extra_ratio": 0.018}  # fmt: skip
    sweep = [{**stages, "input": f"{s * 3 // 4}x{s}", "clip_forward_s": s / 500} for s in (224, 448, 896)]
    results = {
        "js_kernel": {"threads": 2, "results": [_js_row(n, k) for n in (400, 1600) for k in (21, 103)]},
        "cam_pipeline": {"stages": stages, "sweep": sweep},
        "memory": {"runs": [{"image": "500x375", "pixels": 187500, "peak_rss_mb": 1600.0, "seconds": 10.0,
                             "label_size": "500x375", "outcome": "ok"}]},
    }
    machine = {"cpu": "Synthetic CPU", "cores": 2, "torch": "2.0", "python": "3.11", "gpu": None, "js_native": True}
    benchmarks = {name: {"status": "measured", "date": "2026-01-01T00:00:00+00:00", "machine": machine,
                         "command": f"python benchmarks/{name}.py", "medians": run_all.BY_NAME[name].medians(r),
                         "result": r} for name, r in results.items()}  # fmt: skip
    return {"schema": 1, "date": "2026-01-01T00:00:00+00:00", "git_commit": "abc", "machine": machine,
            "benchmarks": benchmarks}  # fmt: skip


def test_render_only_writes_tables_and_valid_png_plots(tmp_path: Path):
    results = tmp_path / "all.json"
    results.write_text(json.dumps(_synthetic_all()))
    page = tmp_path / "page.md"
    page.write_text("# B\n\n<!-- bench:js_kernel_full -->\n<!-- /bench:js_kernel_full -->\n\n"
                    "<!-- bench:cam_sweep -->\n<!-- /bench:cam_sweep -->\n\n<!-- bench:gpu -->\n<!-- /bench:gpu -->\n")  # fmt: skip
    images = tmp_path / "images"
    argv = ["--render-only", "--results", str(results), "--pages", str(page), "--images", str(images)]
    assert run_all.main(argv) == 0
    for name in ("js_kernel_time", "js_kernel_memory", "cams_time_by_size", "cams_memory_by_size"):
        _assert_png(images / f"{name}.png")
    text = page.read_text()
    assert "| 1600 | 103 |" in text and "Synthetic CPU" in text and "`native`" in text
    assert "| 336x448 |" in text
    assert "Not measured yet" in text  # the gpu section of a file without a gpu entry
    assert run_all.main(argv) == 0 and page.read_text() == text  # idempotent


# ----------------------------------------------------------------------------- figures
def test_figures_draw_one_strip_with_a_random_weights_caption(tmp_path: Path, tiny_backbones, voc_root: Path):
    import figures

    page = tmp_path / "page.md"
    page.write_text("# Figures\n\n<!-- figures:strips -->\n<!-- /figures:strips -->\n")
    argv = ["--voc", str(voc_root), "--ids", "2007_004189", "--backbone", "tinyclip-cli:x", "--long-side", "64",
            "--par-iters", "0", "--out", str(tmp_path / "images"), "--page", str(page)]  # fmt: skip
    assert figures.main(argv) == 0
    strip = tmp_path / "images" / "figure_2007_004189.png"
    _assert_png(strip)
    text = page.read_text()
    assert "Random CLIP weights" in text and "--weights" in text
    assert "![figure_2007_004189](images/figure_2007_004189.png)" in text
    assert figures.caption(True, "/ckpt/ViT-B-16.pt", "openclip:ViT-B-16").startswith("CLIP weights: ViT-B-16.pt")
