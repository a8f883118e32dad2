"""Single-stage training: config round trip and errors, schedule, overfit check, SBE losses,
exact resume, crash checkpoints and the ``cdclip train`` command (tiny random models, CPU)."""

from __future__ import annotations

import itertools
import json
import os
import warnings

import numpy as np
import pytest
import torch
from oracle_backbone import tiny_openclip_backbone
from torch.utils.data import default_collate

from cdclip.backbones.dino import DinoBackbone
from cdclip.pipeline.config import OptimConfig, TrainConfig, apply_overrides, coco, voc
from cdclip.pipeline.model import CDCLIP, build_model
from cdclip.pipeline.trainer import (
    CHECKPOINT_NAME,
    LOG_NAME,
    Trainer,
    TrainingTransform,
    build_dataset,
    lr_factor,
)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_openclip_backbone(image_size=64, layers=3)


@pytest.fixture(scope="module")
def tiny_dino():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DinoBackbone("vit_tiny_patch16_224", pretrained=False, depth=2)


def _config(voc_root, out_dir, **extra) -> TrainConfig:
    base = {
        "data": {
            "root": str(voc_root),
            "split": "train_aug",
            "crop_size": 64,
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": {"decoder_dim": 32, "decoder_layers": 1, "decoder_heads": 4, "par_iters": 3},
        "iters": 4,
        "device": "cpu",
        "out_dir": str(out_dir),
        "log_every": 1,
        "checkpoint_every": 100,
        "progress": False,
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return TrainConfig.from_dict(base)


def _trainer(cfg: TrainConfig, clip, dino) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, backbone=clip, dino=dino)
        return Trainer(cfg, model, build_dataset(cfg.data))


# ---------------------------------------------------------------------------- config
def test_config_round_trip_through_dict_json_and_yaml():
    import yaml

    for cfg in (voc(), coco(), TrainConfig()):
        plain = cfg.to_dict()
        assert TrainConfig.from_dict(plain) == cfg
        assert TrainConfig.from_dict(json.loads(json.dumps(plain))) == cfg
        assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(plain))) == cfg
    assert isinstance(voc().model.par_dilations, tuple)


def test_presets_hold_the_recipe():
    v, c = voc(), coco()
    assert (v.iters, c.iters) == (30000, 80000)
    assert (v.model.box_threshold, c.model.box_threshold) == (0.4, 0.7)
    assert (v.model.grouping, c.model.grouping) == ("voc", "coco")
    assert (v.data.dataset, c.data.dataset, c.data.split) == ("voc", "coco", "train2014")
    o = v.optim
    assert (o.lr, o.decoder_lr_mult, o.weight_decay, o.warmup_iters, o.power) == (2e-4, 10.0, 0.01, 50, 1.0)
    assert (v.data.batch_size, v.data.crop_size, v.data.scale_range) == (4, 320, (0.5, 2.0))
    assert (v.loss.lambda_aff, v.loss.lambda_be, v.loss.aff_radius) == (0.1, 1.0, 8)
    assert (
        v.model.refine == "mean" and v.model.par_dilations == (1, 2, 4, 8, 12, 24) and v.model.par_iters == 20
    )
    assert (v.model.decoder_dim, v.model.decoder_layers, v.model.decoder_heads) == (256, 3, 8)


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ValueError, match=r"'lrr'.*optim.*did you mean optim\.lr"):
        TrainConfig.from_dict({"optim": {"lrr": 1e-3}})
    with pytest.raises(ValueError, match=r"'iter'.*top level.*iters"):
        TrainConfig.from_dict({"iter": 5})
    with pytest.raises(ValueError, match="unknown config key 'modle'"):
        TrainConfig.from_dict({"modle": {}})
    with pytest.raises(TypeError, match=r"data\.batch_size: expected an int"):
        TrainConfig.from_dict({"data": {"batch_size": "four"}})
    with pytest.raises(ValueError, match=r"model\.refine: expected one of"):
        TrainConfig.from_dict({"model": {"refine": "cdaa"}})
    with pytest.raises(ValueError, match=r"data\.crop_size"):
        TrainConfig.from_dict({"data": {"crop_size": 100}})
    with pytest.raises(ValueError, match=r"data\.scale_range: expected 2 values"):
        TrainConfig.from_dict({"data": {"scale_range": [0.5]}})


def test_overrides_apply_dotted_keys():
    cfg = apply_overrides(
        voc(), {"optim.lr": 1e-4, "loss.lambda_be": 0, "iters": 10, "data.scale_range": [1, 1.5]}
    )
    assert cfg.optim.lr == 1e-4 and cfg.loss.lambda_be == 0.0 and cfg.iters == 10
    assert cfg.data.scale_range == (1.0, 1.5) and cfg.model == voc().model
    with pytest.raises(ValueError, match="'lambda_bee'"):
        apply_overrides(voc(), {"loss.lambda_bee": 0})


def test_lr_schedule_warms_up_then_decays_linearly():
    optim = OptimConfig(warmup_iters=50, warmup_ratio=1e-6, power=1.0)
    assert lr_factor(0, optim, 1000) == pytest.approx(1e-6)
    assert lr_factor(25, optim, 1000) == pytest.approx(0.5, abs=1e-5)
    assert lr_factor(50, optim, 1000) == pytest.approx(0.95)
    assert lr_factor(500, optim, 1000) == pytest.approx(0.5)
    assert lr_factor(1000, optim, 1000) == 0.0
    factors = [lr_factor(i, optim, 1000) for i in range(50, 1000)]
    assert all(a > b for a, b in itertools.pairwise(factors))


# ---------------------------------------------------------------------------- data and model
def test_training_transform_marks_padding_invalid(voc_root):
    from cdclip.data.voc import VOCSegmentation

    tf = TrainingTransform(
        TrainConfig.from_dict({"data": {"crop_size": 320, "scale_range": [0.5, 0.5]}}).data
    )
    sample = VOCSegmentation(voc_root, "val", transform=tf)[0]
    valid = sample["valid"]
    assert valid.dtype == torch.bool and valid.shape == (320, 320)
    assert 0 < int(valid.sum()) < 320 * 320  # half-size VOC image (<= 250 px) inside a 320 crop: padded
    assert (sample["mask"][~valid] == 255).all()


def test_pseudo_labels_use_image_labels_never_masks_and_void_padding(voc_root, tiny_clip):
    torch.manual_seed(0)
    cfg = _config(voc_root, "unused", loss={"lambda_be": 0.0})
    model = build_model(cfg, backbone=tiny_clip)
    labels = torch.zeros(2, 20)
    labels[0, [8, 14]] = 1  # cat, person
    labels[1, 11] = 1  # dog
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    valid[:, 48:] = False
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": labels, "valid": valid,
             "mask": torch.randint(0, 21, (2, 64, 64))}  # fmt: skip
    out = model.training_step(batch)
    pseudo = out["pseudo_labels"]
    assert pseudo.shape == (2, 64, 64) and pseudo.dtype == torch.int64
    assert (pseudo[~valid] == 255).all()
    assert set(pseudo[0][valid[0]].unique().tolist()) <= {0, 9, 15}
    assert set(pseudo[1][valid[1]].unique().tolist()) <= {0, 12}
    other = model.training_step({**batch, "mask": torch.zeros(2, 64, 64, dtype=torch.long)})
    assert torch.equal(other["pseudo_labels"], pseudo)  # the masks play no part


def test_training_lowers_the_loss_on_a_fixed_batch(voc_root, tmp_path, tiny_clip, tiny_dino):
    cfg = _config(voc_root, tmp_path, optim={"lr": 1e-3, "warmup_iters": 0}, iters=1000,
                  model={"decoder_dropout": 0.0})  # fmt: skip
    trainer = _trainer(cfg, tiny_clip, tiny_dino)
    torch.manual_seed(0)
    batch = default_collate([trainer.dataset[i] for i in range(2)])
    losses = [float(trainer.step(batch)["loss"]) for _ in range(15)]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0], losses


def test_sbe_training_gives_finite_losses(voc_root, tmp_path, tiny_clip, tiny_dino):
    cfg = _config(voc_root, tmp_path, iters=3)
    trainer = _trainer(cfg, tiny_clip, tiny_dino)
    assert trainer.model.sbe is not None and trainer.model.dino is tiny_dino
    last = trainer.train()
    assert set(last) == {"loss", "loss_seg", "loss_aff", "loss_be"}
    assert all(np.isfinite(v) for v in last.values())
    records = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [1, 2, 3]
    assert any(r["loss_be"] > 0 for r in steps)  # the band is not empty on real images
    batch = default_collate([trainer.dataset[i] for i in range(2)])
    out = trainer.model.training_step(batch)
    assert out["band"].dtype == torch.bool and out["corrected_labels"].shape == out["pseudo_labels"].shape


# ---------------------------------------------------------------------------- checkpoints
def _decoder_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.decoder.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_bit_identical_to_an_uninterrupted_run(voc_root, tmp_path, tiny_clip, tiny_dino):
    # 7 samples, batch 2: 3 batches per epoch, so 4 iterations cross an epoch boundary
    full = _trainer(_config(voc_root, tmp_path / "full"), tiny_clip, tiny_dino)
    full.train()
    first = _trainer(_config(voc_root, tmp_path / "split"), tiny_clip, tiny_dino)
    first.train(iters=2)
    assert torch.load(tmp_path / "split" / CHECKPOINT_NAME, weights_only=False)["iteration"] == 2
    assert not any(torch.equal(v, full.model.decoder.state_dict()[k]) for k, v in _decoder_state(first).items()
                   if v.dtype.is_floating_point and v.numel() > 1)  # fmt: skip
    second = _trainer(_config(voc_root, tmp_path / "split"), tiny_clip, tiny_dino)
    second.train(resume=True)
    assert second.iteration == 4
    _assert_same(_decoder_state(second), _decoder_state(full))
    events = [
        json.loads(line).get("event") for line in (tmp_path / "split" / LOG_NAME).read_text().splitlines()
    ]
    assert events.count("resume") == 1


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_crash_leaves_a_checkpoint_that_resumes_exactly(voc_root, tmp_path, tiny_clip, tiny_dino, error):
    full = _trainer(_config(voc_root, tmp_path / "full"), tiny_clip, tiny_dino)
    full.train()

    crashing = _trainer(_config(voc_root, tmp_path / "crash"), tiny_clip, tiny_dino)
    real_step = crashing.model.training_step
    calls = []

    def flaky(batch):
        out = real_step(batch)  # consumes RNG (dropout) before failing: the checkpoint must not
        calls.append(1)
        if len(calls) == 3:
            raise error("boom")
        return out

    crashing.model.training_step = flaky
    with pytest.raises(error):
        crashing.train()
    ckpt = torch.load(tmp_path / "crash" / CHECKPOINT_NAME, weights_only=False)
    assert ckpt["iteration"] == 2 and ckpt["config"]["iters"] == 4
    log = [json.loads(line) for line in (tmp_path / "crash" / LOG_NAME).read_text().splitlines()]
    assert log[-1]["event"] == "interrupted" and log[-1]["error"] == error.__name__

    resumed = _trainer(_config(voc_root, tmp_path / "crash"), tiny_clip, tiny_dino)
    resumed.train(resume=True)
    _assert_same(_decoder_state(resumed), _decoder_state(full))


def test_checkpoint_is_written_atomically_and_loads_into_a_model(voc_root, tmp_path, tiny_clip):
    cfg = _config(voc_root, tmp_path, iters=1, loss={"lambda_be": 0.0})
    trainer = _trainer(cfg, tiny_clip, None)
    trainer.train()
    files = sorted(p.name for p in tmp_path.iterdir())
    # no temporary file left behind; the lock file stays (the OS releases the lock, not the file)
    assert files == [".train.lock", "checkpoint.pt", "config.json", "log.jsonl"]
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == cfg
    fresh = build_model(cfg, backbone=tiny_clip)
    assert isinstance(fresh, CDCLIP)
    fresh.load_decoder(tmp_path / CHECKPOINT_NAME)
    _assert_same(_decoder_state(trainer), {k: v for k, v in fresh.decoder.state_dict().items()})


# ---------------------------------------------------------------------------- command line
@pytest.fixture
def tiny_prefixes(tiny_clip, tiny_dino):
    from cdclip.registry import registry

    seen: dict[str, object] = {}

    def clip_factory(name: str, **kwargs):
        seen["clip"] = kwargs
        return tiny_clip

    def dino_factory(name: str, **kwargs):
        seen["dino"] = kwargs
        return tiny_dino

    registry.register("tinyclip-train", clip_factory, kind="backbone", prefix=True, override=True)
    registry.register("tinydino-train", dino_factory, kind="backbone", prefix=True, override=True)
    yield seen
    registry.unregister("tinyclip-train")
    registry.unregister("tinydino-train")


def test_cli_train_writes_checkpoint_and_log(voc_root, tmp_path, tiny_prefixes, capsys):
    from cdclip.cli import main
    from cdclip.commands import train as train_cmd

    if "train" not in __import__("cdclip.cli", fromlist=["COMMANDS"]).COMMANDS:
        import argparse

        def main(argv):  # until the lead registers the command: same parser path as cdclip.cli
            parser = argparse.ArgumentParser(prog="cdclip train")
            train_cmd.add_arguments(parser)
            return train_cmd.run(parser.parse_args(argv[1:]))

    out = tmp_path / "run"
    argv = ["train", "--preset", "voc", "--data-root", str(voc_root), "--split", "train_aug", "--out", str(out),
            "--weights", "none", "--dino-weights", "none", "--iters", "2", "--device", "cpu", "--workers", "0",
            "--batch-size", "2", "--no-progress",
            "--set", "model.clip=tinyclip-train:any", "--set", "model.dino=tinydino-train:any",
            "--set", "data.crop_size=64", "--set", "model.decoder_dim=32", "--set", "model.decoder_heads=4",
            "--set", "model.decoder_layers=1", "--set", "model.par_iters=2", "--set", "optim.lr=1e-4",
            "--set", "log_every=1"]  # fmt: skip
    assert main(argv) == 0
    assert tiny_prefixes["clip"]["weights"] is None and tiny_prefixes["dino"] == {"pretrained": False}
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=False)
    assert ckpt["iteration"] == 2 and ckpt["config"]["optim"]["lr"] == 1e-4
    assert ckpt["config"]["data"]["root"] == str(voc_root)
    lines = [json.loads(line) for line in (out / LOG_NAME).read_text().splitlines()]
    assert [r["iter"] for r in lines if "loss" in r] == [1, 2]
    assert "done at iteration 2" in capsys.readouterr().out


def test_cli_train_rejects_unknown_keys(tmp_path, capsys):
    import argparse

    from cdclip.cli import main
    from cdclip.commands import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    assert main(["train", "--set", "optim.lrr=1", "--out", str(tmp_path)]) == 2
    assert "optim.lr" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: coco\noptim:\n  lr: 3.0e-4\n")
    args = parser.parse_args(["--config", str(config), "--set", "loss.lambda_be=0", "--device", "cpu"])
    cfg = train_cmd.build_config(args)
    assert cfg.iters == 80000 and cfg.model.box_threshold == 0.7  # the coco preset under the file
    assert cfg.optim.lr == 3e-4 and cfg.loss.lambda_be == 0.0 and cfg.device == "cpu"


@pytest.mark.parametrize(
    "model_options",
    [{"refine": "none", "par_iters": 0}, {"cam": "patch_text", "refine": "attn"}, {"refine": "replace"}],
)
def test_ablation_options_train(voc_root, tiny_clip, model_options):
    cfg = _config(voc_root, "unused", model=model_options, loss={"lambda_be": 0.0, "lambda_aff": 0.0})
    model = build_model(cfg, backbone=tiny_clip)
    labels = torch.zeros(2, 20)
    labels[:, 14] = 1
    out = model.training_step({"image": torch.randn(2, 3, 64, 64), "labels": labels})
    assert torch.isfinite(out["loss"]) and float(out["loss_aff"]) == 0.0 and float(out["loss_be"]) == 0.0
    assert set(out["pseudo_labels"].unique().tolist()) <= {0, 15}
    out["loss"].backward()


class _WhoLoaded(torch.utils.data.Dataset):
    """Items say which process made them and under which seed (a draw from the seeded RNG)."""

    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(index), "draw": torch.rand(()), "pid": torch.tensor(os.getpid())}


def test_batches_keep_their_workers_across_epochs_and_do_not_depend_on_them(voc_root, tmp_path, tiny_clip, tiny_dino):
    # 7 samples, batch 2: 3 batches per epoch; 8 batches span 3 epochs
    streams = {}
    for workers in (0, 2):
        trainer = _trainer(_config(voc_root, tmp_path / str(workers), data={"num_workers": workers}), tiny_clip, tiny_dino)
        trainer.dataset = _WhoLoaded()
        streams[workers] = list(itertools.islice(trainer.batches(), 8))
    for a, b in zip(streams[0], streams[2], strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["draw"], b["draw"])
    pids = {int(pid) for batch in streams[2] for pid in batch["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers served all three epochs
    per_epoch = [sorted(int(i) for batch in streams[0][e * 3 : e * 3 + 3] for i in batch["index"]) for e in (0, 1)]
    assert all(len(set(indices)) == 6 for indices in per_epoch)  # an epoch never repeats a sample
    assert [b["index"].tolist() for b in streams[0][:3]] != [b["index"].tolist() for b in streams[0][3:6]]


@pytest.mark.slow
def test_smoke_preset_trains_evaluates_and_predicts_in_seconds(voc_root, tmp_path, capsys):
    from cdclip.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--preset", "smoke", "--data-root", str(voc_root), "--out", str(tmp_path),
                     "--no-progress"]) == 0  # fmt: skip
        assert "done at iteration 20" in capsys.readouterr().out
        assert main(["eval", "--voc", str(voc_root), "--checkpoint", str(tmp_path / "checkpoint.pt"), "--device",
                     "cpu", "--long-side", "64", "--quiet", "--workers", "0"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval_val" / "metrics.json").read_text())["images"] == 3
    # cdclip predict: the same model and inference settings give eval's predictions; images come out full size
    from cdclip.data.palette import load_label_png

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["predict", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--voc", str(voc_root), "--out",
                     str(tmp_path / "pred"), "--device", "cpu", "--long-side", "64", "--quiet"]) == 0  # fmt: skip
    for png in (tmp_path / "eval_val" / "predictions").iterdir():
        np.testing.assert_array_equal(load_label_png(tmp_path / "pred" / "pred" / png.name), load_label_png(png))
        assert (tmp_path / "pred" / "overlay" / png.name).is_file()
