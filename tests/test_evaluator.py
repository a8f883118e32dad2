"""Multi-scale + flip evaluation, prediction PNGs, resumption, CRF and `cdclip eval` (DESIGN §3.6)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdclip.commands import evaluate as eval_command
from cdclip.data.classnames import VOC_CLASSES_WITH_BG
from cdclip.data.coco import COCOSegmentation
from cdclip.data.palette import load_label_png, save_label_png
from cdclip.data.transforms import CLIP_MEAN, CLIP_STD
from cdclip.data.voc import VOCSegmentation
from cdclip.pipeline.evaluator import Evaluator, evaluate_labels, multiscale_logits, scaled_size
from cdclip.refine.crf import DenseCRF

K = 21


# ---------------------------------------------------------------------------- oracle segmenter
class Oracle:
    """One-hot logits of the current sample's ground truth, resized to whatever input it gets.

    It knows nothing of the evaluator's bookkeeping: it tells a mirrored input from a plain one by
    comparing it with its own resized copy of the image, and answers with the mirrored mask.
    """

    def __init__(self, num_classes: int = K, gain: float = 10.0) -> None:
        self.num_classes, self.gain, self.calls = num_classes, gain, 0

    def set(self, image: torch.Tensor, mask: torch.Tensor) -> None:
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        self.image = (image.float() / 255.0 - mean) / std
        self.mask = torch.where(mask == 255, 0, mask)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = []
        for xi in x:
            h, w = xi.shape[-2:]
            ref = F.interpolate(self.image[None], (h, w), mode="bilinear")[0]
            mirrored = (xi - ref.flip(-1)).abs().mean() < (xi - ref).abs().mean()
            mask = F.interpolate(self.mask[None, None].float(), (h, w), mode="nearest")[0, 0].long()
            mask = mask.flip(-1) if mirrored else mask
            out.append(F.one_hot(mask, self.num_classes).permute(2, 0, 1).float() * self.gain)
        return torch.stack(out)


class OracleDataset:
    """A dataset view that tells the oracle which sample is being evaluated."""

    def __init__(self, dataset: VOCSegmentation, oracle: Oracle) -> None:
        self.dataset, self.oracle, self.names = dataset, oracle, dataset.names
        self.class_names = dataset.class_names

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        self.oracle.set(item["image"].as_subclass(torch.Tensor), item["mask"].as_subclass(torch.Tensor))
        return item


class CountingConv(nn.Module):
    """A random linear segmenter (3x3 conv, output at 1/2 resolution) that counts its calls."""

    def __init__(self, num_classes: int = K) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


def _boundary(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose (2r+1)² neighbourhood holds another label (void counts as a label)."""
    t = torch.from_numpy(mask).float()[None, None]
    size = 2 * radius + 1
    high = F.max_pool2d(t, size, 1, radius)
    low = -F.max_pool2d(-t, size, 1, radius)
    return (high != low)[0, 0].numpy()


# ---------------------------------------------------------------------------- sizes and TTA
def test_scaled_size_rounds_to_patch_multiples() -> None:
    assert scaled_size((375, 500), 1.0, 512, 16) == (384, 512)  # 375·1.024 = 384
    assert scaled_size((333, 500), 1.0, 512, 16) == (336, 512)  # 341.0 → 336
    assert scaled_size((333, 500), 0.75, 512, 16) == (256, 384)  # 255.7 → 256
    assert scaled_size((40, 60), 1.0, None, 1) == (40, 60)
    assert scaled_size((3, 500), 1.0, 512, 16) == (16, 512)  # never below one patch
    with pytest.raises(ValueError, match="scale"):
        scaled_size((10, 10), 0.0)


def test_multiscale_logits_matches_manual_computation() -> None:
    conv = CountingConv(5)
    seen: list[tuple[int, ...]] = []

    def segmenter(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return conv(x)

    image = torch.randn(2, 3, 40, 60)
    with torch.no_grad():
        got = multiscale_logits(segmenter, image, scales=(1.0, 0.75), flip=True, long_side=64, multiple=16)
        # by hand: long side 64 → (42.7, 64) → (48, 64); ×0.75 → (32, 48), which shrinks (antialiased)
        assert seen == [(4, 3, 48, 64), (4, 3, 32, 48)]
        expected = torch.zeros(2, 5, 40, 60)
        for size, antialias in (((48, 64), False), ((32, 48), True)):
            x = F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=antialias)
            plain = F.interpolate(conv(x), (40, 60), mode="bilinear", align_corners=False)
            mirrored = F.interpolate(conv(x.flip(-1)), (40, 60), mode="bilinear", align_corners=False).flip(-1)
            expected += plain + mirrored
        expected /= 4
    assert got.shape == (2, 5, 40, 60) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_flip_is_undone_for_a_segmenter_that_ignores_flips() -> None:
    # the output is a horizontal ramp whatever the input: mirrored inputs give the same ramp, so
    # only a mirrored-back average is symmetric; without flip-back the result would be the ramp
    def ramp(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        xs = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w)
        weights = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
        return (weights * xs * (1 + xs)).expand(b, 3, h, w)  # not odd or even in x

    image = torch.randn(1, 3, 24, 32)
    got = multiscale_logits(ramp, image, scales=(1.0,), flip=True, long_side=None, multiple=1)
    single = ramp(image)
    torch.testing.assert_close(got, (single + single.flip(-1)) / 2)
    assert not torch.allclose(got, single, atol=1e-3)
    no_flip = multiscale_logits(ramp, image, scales=(1.0,), flip=False, long_side=None, multiple=1)
    torch.testing.assert_close(no_flip, single)
    # at another scale: upsample first, then mirror back
    got = multiscale_logits(ramp, image, scales=(0.5,), flip=True, long_side=None, multiple=4)
    small = F.interpolate(ramp(torch.zeros(1, 3, 12, 16)), (24, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, (small + small.flip(-1)) / 2)


def test_multiscale_logits_validates_inputs() -> None:
    conv = CountingConv(3)
    with pytest.raises(ValueError, match="image"):
        multiscale_logits(conv, torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="image"):
        multiscale_logits(conv, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="segmenter output"):
        multiscale_logits(lambda x: x[:1], torch.randn(1, 3, 16, 16), long_side=None)
    with pytest.raises(ValueError, match="scales"):
        multiscale_logits(conv, torch.randn(1, 3, 16, 16), scales=())


# ---------------------------------------------------------------------------- oracle mIoU
@pytest.mark.parametrize("split", ["val", "train_aug"])
def test_oracle_scores_one_at_native_size_with_flip(voc_root: Path, split: str) -> None:
    oracle = Oracle()
    dataset = OracleDataset(VOCSegmentation(voc_root, split), oracle)
    evaluator = Evaluator(oracle, K, VOC_CLASSES_WITH_BG, scales=(1.0,), flip=True, long_side=None,
                          multiple=1, progress=False)
    metrics = evaluator.evaluate(dataset)
    assert metrics["miou"] == 1.0 and metrics["pixel_accuracy"] == 1.0
    assert metrics["images"] == len(dataset) and oracle.calls == len(dataset)
    present = [name for name, v in metrics["iou"].items() if not np.isnan(v)]
    assert "background" in present and len(present) >= 3


def test_oracle_with_weclip_protocol_is_exact_away_from_boundaries(voc_root: Path) -> None:
    oracle = Oracle()
    dataset = OracleDataset(VOCSegmentation(voc_root, "val"), oracle)
    evaluator = Evaluator(oracle, K, VOC_CLASSES_WITH_BG, progress=False)  # 512, (1.0, 0.75), flip
    metrics = evaluator.evaluate(dataset)
    assert metrics["miou"] >= 0.97  # only resampling at object boundaries costs anything
    for index in range(len(dataset)):
        item = dataset[index]
        pred = evaluator.predict(item["image"]).numpy()
        mask = item["mask"].numpy()
        interior = ~_boundary(mask, radius=3) & (mask != 255)
        assert interior.mean() > 0.5
        np.testing.assert_array_equal(pred[interior], mask[interior])


# ---------------------------------------------------------------------------- PNGs, resumption
def test_written_pngs_read_back_and_score_the_same(voc_root: Path, tmp_path: Path) -> None:
    dataset = VOCSegmentation(voc_root, "train_aug")
    evaluator = Evaluator(CountingConv(), K, VOC_CLASSES_WITH_BG, scales=(1.0,), long_side=128, progress=False)
    metrics = evaluator.evaluate(dataset, out_dir=tmp_path, limit=4)
    assert metrics["images"] == 4 and metrics["predicted"] == 4
    pngs = sorted((tmp_path / "predictions").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(dataset.names[:4])
    for index in range(4):
        item = dataset[index]
        written = load_label_png(tmp_path / "predictions" / f"{item['name']}.png")
        np.testing.assert_array_equal(written, evaluator.predict(item["image"]).numpy())
    again = evaluate_labels(tmp_path / "predictions", dataset, limit=4, progress=False)
    assert again["images"] == 4
    assert again["miou"] == pytest.approx(metrics["miou"], abs=1e-12)
    assert again["pixel_accuracy"] == pytest.approx(metrics["pixel_accuracy"], abs=1e-12)
    for name, value in metrics["iou"].items():
        assert np.isnan(value) == np.isnan(again["iou"][name])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["miou"] == pytest.approx(metrics["miou"]) and saved["images"] == 4
    assert saved["iou"]["aeroplane"] is None or isinstance(saved["iou"]["aeroplane"], float)  # NaN → null
    table = (tmp_path / "iou.md").read_text()
    assert "| mIoU" in table and "| background" in table


def test_evaluation_resumes_from_existing_predictions(voc_root: Path, tmp_path: Path) -> None:
    dataset = VOCSegmentation(voc_root, "train_aug")
    segmenter = CountingConv()
    evaluator = Evaluator(segmenter, K, scales=(1.0, 0.75), long_side=96, progress=False)
    first = evaluator.evaluate(dataset, out_dir=tmp_path, limit=3)
    assert segmenter.calls == 3 * 2 and first["predicted"] == 3
    segmenter.calls = 0
    second = evaluator.evaluate(dataset, out_dir=tmp_path, limit=3)
    assert segmenter.calls == 0 and second["reused"] == 3
    assert second["miou"] == first["miou"]
    # a lost PNG and a cut-off one are recomputed, the others are not
    (tmp_path / "predictions" / f"{dataset.names[0]}.png").unlink()
    (tmp_path / "predictions" / f"{dataset.names[1]}.png").write_bytes(b"\x89PNG broken")
    third = evaluator.evaluate(dataset, out_dir=tmp_path, limit=3)
    assert segmenter.calls == 2 * 2 and third["predicted"] == 2 and third["reused"] == 1
    assert third["miou"] == first["miou"]
    segmenter.calls = 0
    evaluator.evaluate(dataset, out_dir=tmp_path, limit=3, overwrite=True)
    assert segmenter.calls == 3 * 2
    assert not list((tmp_path / "predictions").glob(".*"))  # no temporary files left


def test_coco_predictions_use_the_coco_palette(coco_root: Path, tmp_path: Path) -> None:
    dataset = COCOSegmentation(coco_root, "val2017")
    evaluator = Evaluator(CountingConv(81), 81, scales=(1.0,), long_side=64, progress=False)
    assert evaluator.palette == "coco"
    metrics = evaluator.evaluate(dataset, out_dir=tmp_path, limit=1)
    assert metrics["images"] == 1
    from PIL import Image

    with Image.open(next((tmp_path / "predictions").glob("*.png"))) as png:
        assert png.mode == "P" and tuple(png.getpalette()[3 * 255 : 3 * 256]) == (255, 255, 255)


def test_segmenter_with_predict_method_is_called_through_it(voc_root: Path) -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = CountingConv()

        def forward(self, batch: dict) -> None:  # like CDCLIP: forward is the training step
            raise AssertionError("forward must not be used for evaluation")

        def predict(self, images: torch.Tensor) -> torch.Tensor:
            return self.conv(images)

    model = Model()
    evaluator = Evaluator(model, K, scales=(1.0,), long_side=64, progress=False)
    assert evaluator.evaluate(VOCSegmentation(voc_root, "val"), limit=1)["images"] == 1
    assert model.conv.calls == 1


def test_evaluator_rejects_bad_inputs(voc_root: Path) -> None:
    item = VOCSegmentation(voc_root, "val")[0]
    with pytest.raises(ValueError, match="num_classes"):
        Evaluator(CountingConv(5), K, long_side=64, progress=False).predict(item["image"])
    with pytest.raises(TypeError, match="uint8"):
        Evaluator(CountingConv(), K, long_side=64).predict(item["image"].float())
    with pytest.raises(ValueError, match="class_names"):
        Evaluator(CountingConv(), K, class_names=("a", "b"))
    with pytest.raises(ValueError, match="scales"):
        Evaluator(CountingConv(), K, scales=(1.0, -1.0))


# ---------------------------------------------------------------------------- CRF
def test_crf_refines_each_image_once(voc_root: Path) -> None:
    # pydensecrf2 is in the dev extra, so CI runs this; elsewhere the next test covers the missing extra
    pytest.importorskip("pydensecrf.densecrf", reason="the optional crf extra (pydensecrf2) is not installed")
    oracle = Oracle(gain=3.0)
    dataset = OracleDataset(VOCSegmentation(voc_root, "val"), oracle)
    crf = DenseCRF(num_iter=3)
    calls: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def counting_crf(image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        calls.append((image.dtype, tuple(probs.shape)))
        assert torch.allclose(probs.sum(0), torch.ones(()), atol=1e-4)
        return crf(image, probs)

    evaluator = Evaluator(oracle, K, scales=(1.0,), long_side=None, multiple=1, crf=counting_crf, progress=False)
    metrics = evaluator.evaluate(dataset, limit=1)
    height, width = dataset[0]["mask"].shape
    assert calls == [(torch.uint8, (K, height, width))]
    assert metrics["miou"] > 0.9  # confident correct unaries survive the CRF
    assert Evaluator(oracle, K, long_side=64, crf=True).crf is not None  # a default DenseCRF


def test_crf_without_pydensecrf_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install cdclip\[crf\]"):
        Evaluator(CountingConv(), K, crf=True)


# ---------------------------------------------------------------------------- evaluate_labels, CLI
def _write_ground_truth(dataset: object, folder: Path, palette: str = "voc") -> None:
    for index in range(len(dataset)):
        item = dataset[index]
        save_label_png(folder / f"{item['name']}.png", item["mask"], palette=palette)


def test_evaluate_labels_policies_and_missing_files(voc_root: Path, tmp_path: Path) -> None:
    dataset = VOCSegmentation(voc_root, "val")
    _write_ground_truth(dataset, tmp_path)  # VOC masks hold void 255 at object borders
    with pytest.raises(ValueError, match="void"):
        evaluate_labels(tmp_path, dataset, progress=False)
    assert evaluate_labels(tmp_path, dataset, void_prediction="skip", progress=False)["miou"] == 1.0
    as_background = evaluate_labels(tmp_path, dataset, void_prediction="background", progress=False)
    assert as_background["miou"] == 1.0  # void GT pixels are never counted whatever the prediction
    (tmp_path / f"{dataset.names[1]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=dataset.names[1]):
        evaluate_labels(tmp_path, dataset, void_prediction="skip", progress=False)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    eval_command.add_arguments(parser)
    return eval_command.run(parser.parse_args(argv))


def test_cli_scores_ground_truth_pngs_as_perfect(voc_root: Path, coco_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    voc = VOCSegmentation(voc_root, "val")
    _write_ground_truth(voc, tmp_path / "voc_gt")
    argv = ["--voc", str(voc_root), "--split", "val", "--pred-dir", str(tmp_path / "voc_gt"),
            "--void-pred", "skip", "--out", str(tmp_path / "voc_out"), "--quiet"]
    assert _cli(argv) == 0
    saved = json.loads((tmp_path / "voc_out" / "metrics.json").read_text())
    assert saved["miou"] == 1.0 and saved["images"] == len(voc)
    assert "mIoU 100.00" in capsys.readouterr().out

    coco = COCOSegmentation(coco_root, "val2017")
    _write_ground_truth(coco, tmp_path / "coco_gt", palette="coco")
    argv = ["--coco", str(coco_root), "--split", "val2017", "--pred-dir", str(tmp_path / "coco_gt"),
            "--void-pred", "skip", "--quiet"]
    assert _cli(argv) == 0
    saved = json.loads((tmp_path / "coco_gt" / "metrics.json").read_text())  # default: beside the PNGs
    assert saved["miou"] == 1.0 and saved["images"] == len(coco) and len(saved["iou"]) == 81


def test_cli_reports_bad_inputs_with_exit_code_2(voc_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--voc", str(voc_root), "--pred-dir", str(tmp_path / "nowhere")]) == 2
    assert "--pred-dir" in capsys.readouterr().err
    assert _cli(["--voc", str(voc_root), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    torch.save({"config": {"no_such_section": {}}, "decoder": {}}, tmp_path / "bad.pt")
    assert _cli(["--voc", str(voc_root), "--checkpoint", str(tmp_path / "bad.pt"), "--device", "cpu"]) == 2
    assert "cannot build the model" in capsys.readouterr().err
