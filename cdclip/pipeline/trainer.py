"""Single-stage training loop for :class:`~cdclip.pipeline.model.CDCLIP` (WeCLIP recipe, docs/training.md).

:class:`Trainer` owns the optimisation around ``model.training_step``:

* AdamW on the decoder at ``lr × decoder_lr_mult`` (WeCLIP: 2e-4 × 10), linear warm-up from
  ``warmup_ratio × lr`` over ``warmup_iters`` then poly decay ``(1 − it / iters)^power``
  (:func:`lr_factor`);
* optional mixed precision of the decoder on CUDA (``bf16``; ``fp16`` with a gradient scaler),
  optional gradient clipping;
* an infinite stream of batches over epochs. The order of every epoch and the augmentation of
  every sample are seeded from ``(seed, epoch, position)`` — not from the global RNG — so the
  stream is the same whatever the number of workers and wherever a run is resumed;
* a tqdm bar with the running loss, a JSONL log (``log.jsonl``: one line per ``log_every``
  iterations with the averaged losses and the learning rate, plus ``event`` lines);
* checkpoints (``checkpoint.pt``: decoder, optimizer, scheduler, grad scaler, iteration, RNG
  states, config) every ``checkpoint_every`` iterations and at the end, written atomically (temp
  file + ``os.replace``). ``train(resume=True)`` continues from it exactly: on CPU a resumed run
  ends with bit-identical weights to an uninterrupted one. A ``KeyboardInterrupt`` or any
  exception writes a checkpoint of the last completed iteration before re-raising (except a
  non-finite loss, which would only save broken weights).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from cdclip.atomic import atomic_path, atomic_write_text, remove_stale_temps
from cdclip.device import amp_dtype
from cdclip.distributed import global_batch_means, rank_and_world
from cdclip.fingerprint import weights_fingerprint
from cdclip.folder_lock import folder_lock
from cdclip.pipeline.config import DataConfig, OptimConfig, TrainConfig
from cdclip.run_settings import SettingsMismatchError, compare_settings
from cdclip.seeding import seed_everything

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "RESUMABLE_KEYS",
    "RunExistsError",
    "SeededSamples",
    "Trainer",
    "TrainingStopped",
    "TrainingTransform",
    "build_dataset",
    "lr_factor",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
FORMAT = "cdclip-train-v1"
LOCK_NAME = ".train.lock"
# settings a resumed run may change: where things are and how they are reported, not what is computed
RESUMABLE_KEYS = ("out_dir", "progress", "device", "log_every", "checkpoint_every", "keep_checkpoints",
                  "data.root", "data.num_workers")  # fmt: skip
_SEED_MOD = 2**62


# ---------------------------------------------------------------------------- schedule
def lr_factor(iteration: int, optim: OptimConfig, total_iters: int) -> float:
    """Learning-rate multiplier at ``iteration`` (ToCo/WeCLIP ``PolyWarmupAdamW``).

    Warm-up: ``1 − (1 − it / warmup) · (1 − warmup_ratio)``, rising linearly from ``warmup_ratio``;
    afterwards poly decay ``(1 − it / total_iters)^power``, 0 at the end.
    """
    if iteration < optim.warmup_iters:
        return 1.0 - (1.0 - iteration / optim.warmup_iters) * (1.0 - optim.warmup_ratio)
    return max(0.0, 1.0 - iteration / total_iters) ** optim.power


# ---------------------------------------------------------------------------- data
class TrainingTransform:
    """:func:`~cdclip.data.transforms.train_transform` that also returns the crop's ``valid`` mask.

    Crops smaller than the crop size are padded (image: mean colour, mask: void). The pseudo labels
    must be void there too, but the ground-truth mask may not be used to find the padding (VOC's
    void boundaries would leak). So a mask of ones travels through the same rescale/flip/crop and
    marks the real pixels: ``sample["valid"]`` (crop, crop) bool.

    Shape:
        - sample["image"]: (3, H, W) uint8
        - output["image"]: (3, crop, crop) float32
        - output["valid"]: (crop, crop) bool
    """

    def __init__(self, data: DataConfig | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:  # fmt: skip
        from cdclip.data.transforms import normalization_stats, train_transform

        data = data if data is not None else DataConfig()
        default_mean, default_std = normalization_stats(data.normalize)
        self.transform = train_transform(
            data.crop_size, data.scale_range, data.flip_prob, mean or default_mean, std or default_std,
            pad_fill=data.pad_fill,
        )
        self.labels_from_mask = data.labels_from == "mask"

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors

        sample = dict(sample)
        if self.labels_from_mask:
            sample["labels"] = labels_from_mask(sample["mask"], len(sample["labels"]))
        height, width = sample["image"].shape[-2:]
        sample["valid"] = tv_tensors.Mask(torch.ones(height, width, dtype=torch.uint8))
        out = self.transform(sample)
        out["valid"] = out["valid"] == 1
        return out


def labels_from_mask(mask: Any, num_classes: int) -> torch.Tensor:
    """Image classes read from a ground-truth mask, as WeCLIP does (``np.unique(mask) − 1``).

    This leaks ground truth into weak supervision; it exists only to reproduce WeCLIP.

    Shape:
        - mask: (H, W) class ids, 255 (and 254) void
        - output: (C,) float32 multi-hot
    """
    values = torch.unique(torch.as_tensor(mask)).long()
    values = values[(values >= 1) & (values <= num_classes)]
    labels = torch.zeros(num_classes, dtype=torch.float32)
    labels[values - 1] = 1.0
    return labels


def build_dataset(data: DataConfig, transform: Any = "train", skip_bad: bool = False) -> Dataset:
    """The training dataset of ``data`` (VOC or COCO) with :class:`TrainingTransform` by default.

    ``skip_bad`` skips (and counts in ``dataset.skipped``) samples whose files are missing or broken.

    Shape:
        - item["image"]: (3, crop, crop) float32, item["valid"]: (crop, crop) bool, item["labels"]: (C,)
    """
    if data.root is None:
        raise ValueError("data.root: no dataset folder given (set data.root or pass --data-root)")
    tf = TrainingTransform(data) if transform == "train" else transform
    if data.labels_from == "mask":
        warnings.warn(
            "data.labels_from='mask': image classes are read from the ground-truth masks (WeCLIP's label "
            "leak); use it only to reproduce WeCLIP, never to report weakly supervised results",
            UserWarning,
            stacklevel=2,
        )
    from cdclip.data.datasets import segmentation_dataset

    return segmentation_dataset(
        data.dataset, data.root, data.split, transform=tf, label_file=data.label_file, skip_bad=skip_bad
    )


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is drawn under its own torch seed.

    The global RNG is forked and restored around each item: augmentation neither depends on nor
    disturbs the training RNG, in the main process or in workers alike.

    Shape:
        - item: whatever the wrapped dataset returns for ``index``
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class _RankSlice(Sampler[tuple[int, int]]):
    """This process's part of a stream of global batches: batch ``b`` of process ``r`` is keys ``r·B .. r·B + B``
    of global batch ``b`` (``B`` = per-process batch), so the global stream is the same for any number of
    processes with the same global batch.
    """

    def __init__(self, keys: Sampler[tuple[int, int]], batch_size: int, rank: int, world: int) -> None:
        self.keys, self.batch_size, self.rank, self.world = keys, batch_size, rank, world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, key in enumerate(self.keys):
            if (position // self.batch_size) % self.world == self.rank:
                yield key


class _EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled ``(index, sample_seed)`` keys, epoch after epoch without end, from ``start`` of ``epoch``.

    Each epoch holds full batches only, so no batch straddles two epochs, and the keys of epoch
    ``e`` position ``i`` depend on nothing else: a resumed run sees the same batches. One endless
    sampler (instead of a loader per epoch) keeps the DataLoader workers alive across epochs.
    """

    def __init__(self, size: int, batch_size: int, seed: int, epoch: int, start: int = 0) -> None:
        self.size, self.batch_size, self.seed, self.epoch, self.start = size, batch_size, seed, epoch, start

    def _keys(self, epoch: int, start: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % _SEED_MOD)
        order = torch.randperm(self.size, generator=g).tolist()
        stop = (self.size // self.batch_size) * self.batch_size
        base = (self.seed * 7_919 + epoch * self.size) * 1_000_033
        return [(order[i], (base + i) % _SEED_MOD) for i in range(start, stop)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, start = self.epoch, self.start
        while True:
            yield from self._keys(epoch, start)
            epoch, start = epoch + 1, 0


# ---------------------------------------------------------------------------- RNG state
def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002  (the legacy global RNG users may rely on)
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: CPU stream stays exact
            warnings.warn("resume: could not restore the CUDA RNG states", RuntimeWarning, stacklevel=2)


class _LossWindow:
    """Loss sums over the iterations since the last log line (``count`` of them, from time ``tick``)."""

    KEYS = ("loss", "loss_seg", "loss_aff", "loss_be")

    def __init__(self) -> None:
        self.reset(time.time())

    def reset(self, tick: float) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.tick = tick

    def add(self, out: Mapping[str, Any]) -> None:
        """Add one iteration's losses (those of :attr:`KEYS` the model returned)."""
        for key in self.KEYS:
            if key in out:
                value = out[key].float()
                self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1


class _NonFiniteLoss(FloatingPointError):
    """Raised when the loss is NaN/inf: the checkpoint is then *not* overwritten."""


class RunExistsError(FileExistsError):
    """The output folder already holds a training run and neither resume nor overwrite was asked."""


class TrainingStopped(Exception):
    """A SIGTERM stopped training; a checkpoint of the last completed iteration was written."""

    def __init__(self, iteration: int, checkpoint: Path, signum: int) -> None:
        self.iteration, self.checkpoint, self.signum = iteration, checkpoint, signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at iteration {iteration}; checkpoint {checkpoint}"
        )


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Trains the decoder of a :class:`~cdclip.pipeline.model.CDCLIP` (see the module docstring).

    Args:
        config: the run (:class:`TrainConfig`): iterations, optimiser, schedule, logging.
        model: a :class:`CDCLIP` (anything with ``training_step(batch) -> {"loss": ...}``,
            ``trainable_parameters()`` and a ``decoder`` module), already on its device.
        dataset: map-style dataset of dicts with ``image`` (3, crop, crop), ``labels`` (C,) and
            optionally ``valid`` (crop, crop) bool — e.g. :func:`build_dataset`.
        out_dir: where ``checkpoint.pt`` and ``log.jsonl`` go (default ``config.out_dir``).

    Shape:
        - dataset item["image"]: (3, crop, crop)
        - dataset item["labels"]: (C,)
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        dataset: Dataset,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.model = model
        self.dataset = dataset
        self.out_dir = Path(out_dir if out_dir is not None else config.out_dir)
        self.iteration = 0
        try:
            self.device = next(model.decoder.parameters()).device  # type: ignore[union-attr]
        except (AttributeError, StopIteration) as err:
            raise TypeError(
                "model: expected a CDCLIP-like module with a decoder that has parameters"
            ) from err
        optim = config.optim
        decoder_params = [p for p in model.decoder.parameters() if p.requires_grad]  # type: ignore[union-attr]
        ids = {id(p) for p in decoder_params}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [
            {"params": decoder_params, "lr": optim.lr * optim.decoder_lr_mult, "name": "decoder"}
        ]
        if others:
            groups.append({"params": others, "lr": optim.lr, "name": "other"})
        if not decoder_params:
            raise ValueError("model: the decoder has no trainable parameters")
        self.params = decoder_params + others
        self.optimizer = torch.optim.AdamW(
            groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, config.optim, config.iters)
        )
        # the model autocasts itself (CDCLIP(amp=config.amp), see build_model); fp16 needs the scaler
        amp = config.amp if self.device.type == "cuda" else "none"
        self.amp_dtype = amp_dtype(amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        self._rng_at_start: dict[str, Any] | None = None
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])
        self.rank, self.world = rank_and_world()
        self.decoder: nn.Module = model.decoder  # type: ignore[assignment]  (what checkpoints hold)
        if self.world > 1:  # DDP around the decoder only: the frozen backbones are not wrapped
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device] if self.device.type == "cuda" else None
            model.decoder = DistributedDataParallel(self.decoder, device_ids=ids)  # type: ignore[assignment]

    # ------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_NAME

    # ------------------------------------------------------------------ checkpoints
    @functools.cached_property
    def frozen_fingerprint(self) -> str:
        """:func:`~cdclip.fingerprint.weights_fingerprint` of everything but the decoder (CLIP, DINO)."""
        frozen = {k: v for k, v in self.model.state_dict().items() if not k.startswith("decoder.")}
        return weights_fingerprint(frozen)

    @functools.cached_property
    def clip_fingerprint(self) -> str | None:
        """Fingerprint of the CLIP backbone alone (``cdclip eval`` rebuilds CLIP without DINO)."""
        backbone = getattr(self.model, "backbone", None)
        return weights_fingerprint(backbone) if isinstance(backbone, nn.Module) else None

    def state_dict(self, rng: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly: decoder, optimiser, schedule, RNG, config."""
        return {
            "format": FORMAT,
            "iteration": self.iteration,
            "decoder": self.decoder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": dict(rng) if rng is not None else _rng_state(),
            "world_size": self.world,
            "global_batch": self.config.data.batch_size * self.world,
            "config": self.config.to_dict(),
            "class_names": list(getattr(self.model, "class_names", ())),
            "frozen_fingerprint": self.frozen_fingerprint,
            "clip_fingerprint": self.clip_fingerprint,
        }

    def save_checkpoint(
        self, path: str | os.PathLike[str] | None = None, rng: Mapping[str, Any] | None = None, gather: bool = True
    ) -> Path:
        """Write the state atomically (temporary file in the same folder, fsync, then ``os.replace``).

        With several processes every one must call it (their RNG states are gathered, ``gather``)
        and process 0 writes; ``gather=False`` (a crash in one process) writes process 0's alone.
        """
        target = Path(path) if path is not None else self.checkpoint_path
        state = self.state_dict(rng)
        if self.world > 1 and gather:  # every process's RNG, so that each resumes its own stream
            import torch.distributed as dist

            ranks: list[Any] = [None] * self.world
            dist.all_gather_object(ranks, state["rng"])
            state["rng_ranks"] = ranks
        if self.rank == 0:
            with atomic_path(target, fsync=True) as tmp:
                torch.save(state, tmp)
        return target

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> int:
        """Restore a checkpoint written by :meth:`save_checkpoint`; returns its iteration.

        Raises:
            SettingsMismatchError: the configuration differs in a key outside :data:`RESUMABLE_KEYS`,
                or the frozen backbones are not the ones the run started with.
        """
        source = Path(path) if path is not None else self.checkpoint_path
        state = torch.load(source, map_location="cpu", weights_only=False)
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise ValueError(f"checkpoint: {source} is not a cdclip training checkpoint ({FORMAT})")
        self._check_resumable(state, source)
        self.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(self._rng_of_this_rank(state))
        self.iteration = int(state["iteration"])
        return self.iteration

    def _rng_of_this_rank(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        """This process's RNG state: its own with the same world size, else rank 0's (with a warning)."""
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.world:
            return ranks[self.rank]
        if state.get("world_size", 1) != self.world:
            warnings.warn(
                f"resume: the checkpoint was written by {state.get('world_size', 1)} process(es), this run has "
                f"{self.world}; the data order continues exactly, the dropout noise does not",
                RuntimeWarning, stacklevel=3,
            )  # fmt: skip
        return state["rng"]

    def _check_resumable(self, state: Mapping[str, Any], source: Path) -> None:
        """Refuse to continue a checkpoint with another configuration or other frozen weights."""
        hint = "resume with the checkpoint's settings, or start again with --overwrite (Trainer.train(overwrite=True))"
        differences = compare_settings(state.get("config", {}), self.config.to_dict(),
                                       ignore=(*RESUMABLE_KEYS, "data.batch_size"))  # fmt: skip
        stored_batch = state.get("global_batch", state.get("config", {}).get("data", {}).get("batch_size"))
        if stored_batch != self.config.data.batch_size * self.world:
            differences.append(("global batch (data.batch_size x processes)", stored_batch,
                                self.config.data.batch_size * self.world))  # fmt: skip
        stored = state.get("frozen_fingerprint")
        if stored is None:
            warnings.warn(f"resume: {source} has no backbone fingerprint; the frozen weights are not checked",
                          RuntimeWarning, stacklevel=3)  # fmt: skip
        elif stored != self.frozen_fingerprint:
            differences.append(("frozen backbone weights (fingerprint)", stored, self.frozen_fingerprint))
        if differences:
            raise SettingsMismatchError(source.parent, differences, hint)

    # ------------------------------------------------------------------ data
    def batches(self) -> Iterator[Any]:
        """Endless batches from ``self.iteration`` on; epoch ``e`` position ``i`` is always the same batch."""
        data = self.config.data
        size = len(self.dataset)  # type: ignore[arg-type]
        global_batch = data.batch_size * self.world
        per_epoch = size // global_batch
        if per_epoch == 0:
            raise ValueError(
                f"dataset: {size} samples is fewer than the global batch data.batch_size x processes = {global_batch}"
            )
        epoch, start = divmod(self.iteration, per_epoch)
        keys = _EpochSampler(size, global_batch, self.config.seed, epoch, start * global_batch)
        loader = DataLoader(
            SeededSamples(self.dataset),
            batch_size=data.batch_size,
            sampler=_RankSlice(keys, data.batch_size, self.rank, self.world),
            num_workers=data.num_workers,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating a loader must not consume the global (dropout) RNG
            generator=torch.Generator().manual_seed(self.config.seed + epoch),
        )
        yield from loader

    # ------------------------------------------------------------------ logging
    def _log(self, record: Mapping[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record), sort_keys=False) + "\n")

    # ------------------------------------------------------------------ training
    @functools.cached_property
    def _passes_iteration(self) -> bool:
        """``iteration=`` for models whose ``training_step`` takes it (CDCLIP's decoder-affinity switch)."""
        import inspect

        params = inspect.signature(self.model.training_step).parameters  # type: ignore[operator]
        return "iteration" in params

    def step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns the model's outputs (losses detached).

        Shape:
            - batch["image"]: (B, 3, crop, crop)
            - output["loss"]: ()
        """
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        kwargs = {"iteration": self.iteration} if self._passes_iteration else {}
        with global_batch_means():  # several processes: the losses of the global batch, exactly
            out = self.model.training_step(batch, **kwargs)  # type: ignore[operator]
        loss = out["loss"]
        self.scaler.scale(loss).backward()
        if self.config.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])  # the decoder lr of this step
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def train(self, resume: bool = False, iters: int | None = None, overwrite: bool = False) -> dict[str, float]:
        """Train until ``iters`` (default ``config.iters``) iterations are done.

        The output folder is locked for the whole run (a second run into it raises
        :class:`~cdclip.folder_lock.FolderLockedError`) and temporary files a killed run left are
        removed. A SIGTERM (what schedulers send on pre-emption) finishes the current iteration,
        writes a checkpoint and raises :class:`TrainingStopped`.

        Args:
            resume: continue from ``checkpoint.pt`` in the output folder when it exists; its
                configuration must match (see :meth:`load_checkpoint`).
            iters: stop after this many iterations in total (the schedule still spans
                ``config.iters``); useful to split a run.
            overwrite: start again in a folder that already holds a run (its log, checkpoints
                and config are replaced).

        Returns:
            The losses averaged over the last logging window (``{}`` when nothing ran).

        Raises:
            RunExistsError: the folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        """
        total = self.config.iters if iters is None else int(iters)
        if total > self.config.iters:
            raise ValueError(f"iters: expected at most config.iters={self.config.iters}, got {total}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.out_dir, LOCK_NAME) if self.rank == 0 else contextlib.nullcontext():
            if self.rank == 0:
                remove_stale_temps(self.out_dir, recursive=False)
            self._begin(resume, overwrite)
            if self.iteration >= total:
                return {}
            # several processes: Ctrl-C too ends the iteration everywhere, then one checkpoint is written
            signums = (signal.SIGTERM, signal.SIGINT) if self.world > 1 else (signal.SIGTERM,)
            with _StopOnSignal(signums) as stop:
                return self._loop(total, stop)

    def _begin(self, resume: bool, overwrite: bool) -> None:
        """Load the checkpoint (``resume``) or start from iteration 0 in an empty or overwritten folder."""
        if resume and self.checkpoint_path.is_file():
            self.load_checkpoint()
            self._log({"event": "resume", "iter": self.iteration, "time": time.time()})
            return
        existing = [p for p in (self.checkpoint_path, self.log_path, self.out_dir / "config.json") if p.exists()]
        if existing and not overwrite and not (resume and not self.checkpoint_path.exists()):
            raise RunExistsError(
                f"{self.out_dir} already holds a training run ({', '.join(p.name for p in existing)}); "
                "pass --resume to continue it or --overwrite to start again (Trainer.train(resume=True / "
                "overwrite=True))"
            )
        if resume:
            warnings.warn(f"resume: no checkpoint at {self.checkpoint_path}; starting from scratch", stacklevel=3)
        _barrier(self.world)  # every process has looked at the folder before process 0 writes into it
        if self.rank == 0:
            for old in [self.log_path, *self.out_dir.glob("iter_*.pt")]:
                old.unlink(missing_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        self.iteration = 0
        seed_everything(self.config.seed + self.rank)  # dropout: each process its own stream
        self._log({"event": "start", "iter": 0, "time": time.time(), "processes": self.world})

    def _loop(self, total: int, stop: _StopOnSignal) -> dict[str, float]:
        """The iterations from ``self.iteration`` to ``total``, with logging, checkpoints and crash saves."""
        from tqdm.auto import tqdm

        window = _LossWindow()
        last: dict[str, float] = {}
        bar = tqdm(
            total=total, initial=self.iteration, disable=not self.config.progress or self.rank != 0,
            dynamic_ncols=True, desc="train",
        )  # fmt: skip
        data = self.batches()
        self._rng_at_start = None
        try:
            while self.iteration < total:
                self._rng_at_start = _rng_state()  # a crash mid-iteration resumes from here
                out = self.step(next(data))
                self._rng_at_start = None  # the iteration completed: the current RNG is the one to save
                window.add(out)
                bar.update(1)
                if self.iteration % self.config.log_every == 0 or self.iteration == total:
                    last = self._log_window(window, bar)
                self._checkpoint_if_due(total)
                signum = _agreed_signal(stop.signum, self.world)
                if signum is not None and self.iteration < total:
                    self._stop(signum)
            _check_same_weights(self.decoder, self.world)
            self._log({"event": "end", "iter": self.iteration, "time": time.time()})
        except (_NonFiniteLoss, TrainingStopped) as err:
            if isinstance(err, _NonFiniteLoss):
                self._log({"event": "non_finite_loss", "iter": self.iteration, "time": time.time()})
            raise
        except BaseException as err:
            self._save_after_crash(err)
            if stop.signum is not None:  # e.g. a DataLoader worker that the same SIGTERM killed
                raise TrainingStopped(self.iteration, self.checkpoint_path, stop.signum) from err
            raise
        finally:
            bar.close()
            data.close()
        return last

    def _log_window(self, window: _LossWindow, bar: Any) -> dict[str, float]:
        """Average the window over its iterations and the processes, refuse NaN/inf, log it and start a new one."""
        last = {k: v / window.count for k, v in _mean_over_processes(window.sums, self.world).items()}
        if not all(math.isfinite(v) for v in last.values()):
            raise _NonFiniteLoss(f"non-finite loss at iteration {self.iteration}: {last}")
        now = time.time()
        record = {"iter": self.iteration, **last, "lr": self.last_lr,
                  "sec_per_iter": (now - window.tick) / window.count, "time": now}  # fmt: skip
        self._log(record)
        bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}", lr=f"{record['lr']:.2e}")
        window.reset(now)
        return last

    def _checkpoint_if_due(self, total: int) -> None:
        """``checkpoint.pt`` every ``checkpoint_every`` iterations and at the end (plus a kept copy if asked)."""
        cfg = self.config
        if self.iteration % cfg.checkpoint_every == 0 or self.iteration == total:
            self.save_checkpoint()
            if cfg.keep_checkpoints and self.iteration % cfg.checkpoint_every == 0:
                self.save_checkpoint(self.out_dir / f"iter_{self.iteration:07d}.pt")

    def _stop(self, signum: int) -> None:
        """Checkpoint the completed iteration and stop (a SIGTERM arrived)."""
        self.save_checkpoint()
        self._log({"event": "terminated", "iter": self.iteration, "signal": signal.Signals(signum).name,
                   "time": time.time()})  # fmt: skip
        raise TrainingStopped(self.iteration, self.checkpoint_path, signum)

    def _save_after_crash(self, err: BaseException) -> None:
        """Checkpoint of the last completed iteration after an exception (never hides ``err``)."""
        try:
            self.save_checkpoint(rng=self._rng_at_start, gather=False)
            self._log({"event": "interrupted", "iter": self.iteration, "error": type(err).__name__,
                       "time": time.time()})  # fmt: skip
        except Exception as save_err:
            warnings.warn(f"could not save the crash checkpoint: {save_err}", RuntimeWarning, stacklevel=3)


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _mean_over_processes(window: Mapping[str, torch.Tensor], world: int) -> dict[str, float]:
    """The logging window's loss sums, averaged over the processes (one all-reduce)."""
    keys = sorted(window)
    values = torch.stack([window[k].detach().float().reshape(()) for k in keys]) if keys else torch.zeros(0)
    if world > 1 and keys:
        import torch.distributed as dist

        dist.all_reduce(values)
        values = values / world
    return {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}


def _agreed_signal(signum: int | None, world: int) -> int | None:
    """A stop signal any process received, known to all (so that every process stops at one iteration)."""
    if world == 1:
        return signum
    import torch.distributed as dist

    from cdclip.distributed import collective_device

    flag = torch.tensor([signum or 0], dtype=torch.int64, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def _check_same_weights(decoder: nn.Module, world: int) -> None:
    """DDP keeps every process's decoder identical; verify it at the end (a fingerprint per process)."""
    if world == 1:
        return
    import torch.distributed as dist

    prints: list[Any] = [None] * world
    dist.all_gather_object(prints, weights_fingerprint(decoder))
    if len(set(prints)) != 1:
        raise RuntimeError(f"distributed training: the processes' decoders differ at the end ({prints})")


class _StopOnSignal:
    """Within the block, SIGTERM only records itself (``.signum``); the loop stops at the next iteration.

    Signal handlers can only be set from the main thread; elsewhere the block changes nothing.
    """

    def __init__(self, signums: Sequence[int] = (signal.SIGTERM,)) -> None:
        self.signums = tuple(signums)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
