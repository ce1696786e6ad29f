"""``train(dataset_uri, output_uri, config) -> bundle URI``: the training stage.

One process or many (DDP under torchrun), CPU or CUDA (AMP, channels_last, optional torch.compile): the same
function. Each epoch trains on the ``train`` split, evaluates on ``val`` (loss, ROC AUC of the positive class,
accuracy), writes a checkpoint, logs one line and may stop early; the best epoch's weights go into the bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops import storage
from visionops.errors import ConfigError, DataError
from visionops.policy import default_positive_class
from visionops.preprocess import AugmentSpec, PreprocessSpec, build_transform
from visionops.training import checkpoint as ckpt
from visionops.training import distributed
from visionops.training.config import TrainConfig
from visionops.training.data import CachedImageDataset, EpochSampler, build_cache, make_loader
from visionops.weights import resolve_pretrained

log = logging.getLogger("visionops.training")


# -- resolving what to train ------------------------------------------------------------------------------------
def resolve_preprocess(
    architecture: str,
    image_size: int | None,
    base: PreprocessSpec | None = None,
    crop_pct: float | None = None,
) -> PreprocessSpec:
    """The registry entry's spec (or ``base``) with ``image_size`` and ``crop_pct`` applied.

    ``crop_pct`` = image_size / resize_size (the centre crop's share of the short side, as in timm); when not
    given, the base spec's ratio is kept.
    """
    from visionops.models import get_entry

    spec = base or get_entry(architecture).preprocess
    size = image_size or spec.image_size
    pct = crop_pct or spec.image_size / spec.resize_size
    resize = max(size, round(size / pct))
    if (size, resize) == (spec.image_size, spec.resize_size):
        return spec
    return dataclasses.replace(spec, image_size=size, resize_size=resize)


def default_checkpoint_dir(output_uri: str) -> str:
    """Checkpoints live beside the bundle (``OUTPUT.checkpoints``): publishing the bundle never touches them."""
    return str(output_uri).rstrip("/") + ".checkpoints"


def git_commit() -> str | None:
    """The code's git commit (env ``VISIONOPS_GIT_COMMIT`` in images built without .git), or None."""
    from visionops.settings import ProcessSettings

    commit = ProcessSettings.env_values().get("git_commit")
    if commit:
        return commit
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def _cosine_with_warmup(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (the usual recipe)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def roc_auc(labels_positive, scores) -> float | None:
    """ROC AUC of the positive class, or None when the labels hold a single class."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels_positive = np.asarray(labels_positive)
    if labels_positive.min() == labels_positive.max():
        return None
    return float(roc_auc_score(labels_positive, scores))


@dataclasses.dataclass
class EarlyStopping:
    """Tracks the best value of the validation metric and the epochs since it improved."""

    metric: str
    patience: int
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    best_loss: float | None = None

    def update(self, epoch: int, value: float | None, val_loss: float | None = None) -> bool:
        """Record ``value``; True when it is the best so far (ties on ROC AUC go to the lower val loss)."""
        if value is None:
            better = False
        elif self.best is None:
            better = True
        elif self.metric == "val_loss":
            better = value < self.best
        else:
            tie = value == self.best and val_loss is not None and self.best_loss is not None
            better = value > self.best or (tie and val_loss < self.best_loss)
        if better:
            self.best, self.best_epoch, self.bad_epochs, self.best_loss = value, epoch, 0, val_loss
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the trainer -----------------------------------------------------------------------------------------------
class Trainer:
    """The state of one training run; :meth:`run` does the work. Use :func:`train`."""

    def __init__(
        self,
        dataset_uri: str,
        output_uri: str,
        config: TrainConfig,
        runtime: distributed.Runtime,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.dataset_uri, self.output_uri, self.runtime = str(dataset_uri), str(output_uri), runtime
        self.on_epoch_end = on_epoch_end
        self.checkpoint_dir = config.checkpoint_dir or default_checkpoint_dir(output_uri)
        self._load_data_and_resolve(config)

    # -- setup -------------------------------------------------------------------------------------------------
    def _load_data_and_resolve(self, config: TrainConfig) -> None:
        from visionops.bundle import load_bundle, read_meta
        from visionops.data.manifest import load_dataset

        self.dataset = load_dataset(self.dataset_uri)
        self.classes = self.dataset.classes
        declared = self.dataset.meta.get("positive_class")
        fallback = default_positive_class(self.classes)
        self.positive_class = declared if declared in self.classes else fallback
        architecture, base_spec, self.warm_state, self.parent = config.architecture, None, None, None
        self.pretrained = None
        if config.warm_start:
            meta = read_meta(config.warm_start)
            if list(meta["classes"]) != list(self.classes):
                raise ConfigError(
                    f"warm start bundle {config.warm_start} has classes {meta['classes']} but dataset "
                    f"{self.dataset_uri} has {self.classes}; fine-tuning needs the same classes in the same order "
                    "(train from scratch or with --pretrained instead)"
                )
            if meta["architecture"] != architecture:
                log.info(
                    "warm start: using the bundle's architecture %s (not %s)",
                    meta["architecture"],
                    architecture,
                )
            architecture, base_spec = meta["architecture"], PreprocessSpec.from_dict(meta["preprocess"])
            self.warm_state = load_bundle(config.warm_start).model.state_dict()
            self.parent = {"uri": config.warm_start, "model_version": meta["model_version"]}
            if config.pretrained:
                log.info(
                    "warm start: --pretrained %s is not used (the champion's weights are)", config.pretrained
                )
                config = config.replace(pretrained=None)
        elif config.pretrained:
            self.pretrained = resolve_pretrained(config.pretrained, architecture)
            base_spec = self.pretrained.preprocess  # the weights' own preprocessing (None: the registry's)
        self.spec = resolve_preprocess(architecture, config.image_size, base_spec, config.crop_pct)
        self.train_frame, self.val_frame = self.dataset.split("train"), self.dataset.split("val")
        for name, frame in (("train", self.train_frame), ("val", self.val_frame)):
            if frame.empty:
                raise DataError(
                    f"dataset {self.dataset_uri} has no {name!r} images; ingest it with a {name} split"
                )
        unknown = sorted(set(self.dataset.frame["label"]) - set(self.classes))
        if unknown:
            raise DataError(
                f"dataset {self.dataset_uri} has labels {unknown} that are not among its classes {self.classes}"
            )
        missing = [c for c in self.classes if not (self.train_frame["label"] == c).any()]
        if missing:
            raise DataError(f"classes {missing} have no training images in {self.dataset_uri}")
        metric = config.early_stopping_metric
        if metric == "val_auc" and self.val_frame["label"].nunique() < 2:
            log.warning("val split holds a single class: ROC AUC is undefined, early stopping uses val_loss")
            metric = "val_loss"
        self.config = config.replace(
            architecture=architecture,
            image_size=self.spec.image_size,
            crop_pct=round(self.spec.image_size / self.spec.resize_size, 4),
            early_stopping_metric=metric,
        )

    def _build(self) -> None:
        """Model, data loaders, loss and optimiser, in this order (the seeded RNG draws follow it)."""
        _seed_everything(self.config.seed, self.config.deterministic)
        self._build_model()
        self._build_loaders()
        self._build_optimisation()

    def _build_model(self) -> None:
        """The model (warm-started or pretrained), on its device, wrapped for DDP/compile when asked."""
        import torch

        from visionops.models import create_model, load_pretrained

        cfg, rt = self.config, self.runtime
        self.model = create_model(cfg.architecture, len(self.classes))
        self.replaced_head: list[str] = []
        if self.warm_state is not None:
            self.model.load_state_dict(self.warm_state)
        elif self.pretrained is not None:
            state = self.pretrained.state_dict(progress=cfg.progress and rt.is_main)
            self.replaced_head = load_pretrained(self.model, cfg.architecture, state)
            if self.replaced_head:
                log.info("pretrained weights loaded; head replaced (%s)", ", ".join(self.replaced_head))
        self.model.to(rt.device)
        self.channels_last = rt.is_cuda and cfg.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if rt.is_cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.train_model = self.model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[rt.local_rank] if rt.is_cuda else None
            )
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

    def _cache_splits(self) -> tuple[list, list]:
        """Decode the train and val images once into the resized uint8 cache (see training.data)."""
        cfg = self.config
        cache = {
            "cache_dir": cfg.cache_dir,
            "workers": cfg.decode_workers,
            "progress": cfg.progress and self.runtime.is_main,
        }
        t0 = time.perf_counter()
        train_images, val_images = (
            build_cache(
                list(frame["path"]), list(frame["sha256"]), self.spec, desc=f"caching {name} images", **cache
            )
            for name, frame in (("train", self.train_frame), ("val", self.val_frame))
        )
        log.info(
            "decoded %d train + %d val images at %d px in %.1fs",
            len(train_images),
            len(val_images),
            self.spec.resize_size,
            time.perf_counter() - t0,
        )
        return train_images, val_images

    def _loader_workers(self) -> int:
        """``num_workers``; auto (-1): none on CPU (the model needs the cores), a few per GPU on CUDA."""
        import torch

        if self.config.num_workers >= 0:
            return self.config.num_workers
        if not self.runtime.is_cuda:
            return 0
        import os

        return min(8, max(1, (os.cpu_count() or 2) // max(1, torch.cuda.device_count())))

    def _build_loaders(self) -> None:
        """The cached splits, the factory's train/eval transforms, the epoch samplers and the loaders."""
        cfg, rt = self.config, self.runtime
        index = {c: i for i, c in enumerate(self.classes)}
        self.train_labels = [index[c] for c in self.train_frame["label"]]
        self.val_labels = [index[c] for c in self.val_frame["label"]]
        train_images, val_images = self._cache_splits()
        augment = AugmentSpec(
            hflip=cfg.aug_hflip,
            scale=(cfg.aug_scale_min, 1.0),
            color_jitter=cfg.aug_color_jitter,
            rotation=cfg.aug_rotation,
        )
        self.train_transform = build_transform(self.spec, train=True, augment=augment)
        self.eval_transform = build_transform(self.spec, train=False)
        self.num_workers = self._loader_workers()
        self.train_sampler = EpochSampler(
            len(train_images), seed=cfg.seed, shuffle=True, rank=rt.rank, world_size=rt.world_size
        )
        self.val_sampler = EpochSampler(
            len(val_images), seed=cfg.seed, shuffle=False, rank=rt.rank, world_size=rt.world_size
        )
        loader = {"num_workers": self.num_workers, "pin_memory": rt.is_cuda, "seed": cfg.seed}
        self.train_loader = make_loader(
            CachedImageDataset(train_images, self.train_labels, self.train_transform),
            self.train_sampler,
            batch_size=cfg.batch_size,
            drop_last=len(self.train_sampler) >= cfg.batch_size,
            **loader,
        )
        self.val_loader = make_loader(
            CachedImageDataset(val_images, self.val_labels, self.eval_transform),
            self.val_sampler,
            batch_size=cfg.batch_size * 2,
            drop_last=False,
            **loader,
        )

    def _build_optimisation(self) -> None:
        """Loss (optionally class-weighted), optimiser with decay groups, warmup+cosine schedule, early stop."""
        import torch
        from torch import nn

        cfg, rt = self.config, self.runtime
        counts = torch.bincount(torch.tensor(self.train_labels), minlength=len(self.classes)).double()
        weights = counts.sum() / (len(self.classes) * counts) if cfg.class_weighting == "balanced" else None
        self.class_weights = None if weights is None else [round(float(w), 6) for w in weights]
        self.criterion = nn.CrossEntropyLoss(
            weight=None if weights is None else weights.float().to(rt.device),
            label_smoothing=cfg.label_smoothing,
        )
        groups = _param_groups(self.model, cfg.weight_decay)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0
            )
        steps = len(self.train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _cosine_with_warmup(cfg.epochs * steps, round(cfg.warmup_epochs * steps), cfg.min_lr_ratio),
        )
        self.early = EarlyStopping(cfg.early_stopping_metric, cfg.patience)
        self.history: list[dict[str, Any]] = []
        self.best_state: dict | None = None
        self.start_epoch, self.stopped_early = 0, False

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _checkpoint_payload(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "early": self.early.state(),
            "best_model": self.best_state,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "config": json.dumps(self.config.to_dict(), sort_keys=True),
            "classes": list(self.classes),
        }

    def _resume(self) -> None:
        state = ckpt.load(self.checkpoint_dir)
        where = storage.join(self.checkpoint_dir, ckpt.LAST)
        if state is None:
            log.info("resume: no checkpoint at %s; starting from scratch", where)
            return
        ckpt.check_compatible(json.loads(state["config"]), self.config.to_dict(), where)
        if list(state["classes"]) != list(self.classes):
            raise ConfigError(f"cannot resume from {where}: it was trained on classes {state['classes']}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        saved_epochs = json.loads(state["config"])["epochs"]
        if saved_epochs == self.config.epochs:
            self.scheduler.load_state_dict(state["scheduler"])
        else:  # a longer (or shorter) run: the cosine schedule is recomputed and continues at the same step
            log.warning(
                "resume with epochs %d (was %d): the schedule is stretched; results differ from a "
                "straight run",
                self.config.epochs,
                saved_epochs,
            )
            import warnings

            self.scheduler.last_epoch = state["scheduler"]["last_epoch"] - 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.scheduler.step()
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.early = EarlyStopping(**state["early"])
        self.early.patience = self.config.patience
        self.best_state, self.history = state["best_model"], list(state["history"])
        self.start_epoch, self.stopped_early = int(state["epoch"]) + 1, bool(state["stopped_early"])
        log.info("resumed from %s after epoch %d", where, self.start_epoch)

    # -- one epoch ---------------------------------------------------------------------------------------------
    def _to_device(self, x, y):
        import torch

        x = x.to(self.runtime.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.runtime.device, non_blocking=True)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard of the training split; returns loss, images/s and lr."""
        import torch
        from tqdm.auto import tqdm

        self.train_model.train()
        self.train_sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=self.runtime.device, dtype=torch.float64)
        seen = 0
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            leave=False,
            disable=not (self.config.progress and self.runtime.is_main),
        )
        start = time.perf_counter()
        for x, y, _ in bar:
            x, y = self._to_device(x, y)
            with torch.autocast(
                self.runtime.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ):
                loss = self.criterion(self.train_model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
        if self.runtime.is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        total_loss, total_seen = distributed.all_sum(self.runtime, [float(loss_sum), float(seen)])
        return {
            "train_loss": total_loss / max(1.0, total_seen),
            "images_per_s": total_seen / max(elapsed, 1e-9),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_seconds": elapsed,
        }

    def evaluate(self) -> dict[str, Any]:
        """Val loss (unweighted, no smoothing), ROC AUC of the positive class and accuracy, over all ranks."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        self.model.eval()
        indices, probs, losses = [], [], []
        with torch.inference_mode():
            for x, y, idx in self.val_loader:
                x, y = self._to_device(x, y)
                with torch.autocast(
                    self.runtime.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
                ):
                    logits = self.model(x).float()
                losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
                probs.append(torch.softmax(logits, 1).cpu())
                indices.append(idx)
        local = (torch.cat(indices).numpy(), torch.cat(probs).numpy(), torch.cat(losses).numpy())
        merged_idx, merged_probs, merged_loss = (
            np.concatenate(p) for p in zip(*distributed.all_gather(self.runtime, local), strict=True)
        )
        order = np.unique(merged_idx, return_index=True)[1]  # DistributedSampler pads shards with repeats
        idx, prob, loss = merged_idx[order], merged_probs[order], merged_loss[order]
        labels = np.asarray(self.val_labels)[idx]
        pos = self.classes.index(self.positive_class)
        return {
            "val_loss": float(loss.mean()),
            "val_auc": roc_auc(labels == pos, prob[:, pos]),
            "val_acc": float((prob.argmax(1) == labels).mean()),
            "_indices": idx,
            "_probs": prob,
        }

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self) -> str:
        import torch

        self._build()
        rt, cfg = self.runtime, self.config
        if cfg.resume:
            self._resume()
        elif rt.is_main and storage.exists(storage.join(self.checkpoint_dir, ckpt.LAST)):
            log.warning(
                "starting a new run: the checkpoint in %s will be overwritten (pass resume to continue)",
                self.checkpoint_dir,
            )
        if rt.is_main:
            ckpt.write_config(self.checkpoint_dir, self.config.to_dict())
        log.log(
            logging.INFO if rt.is_main else logging.DEBUG,
            "training %s (%d classes) at %d px on %s%s, %d train / %d val images, %d worker(s)",
            cfg.architecture,
            len(self.classes),
            self.spec.image_size,
            rt.device,
            f" x{rt.world_size}" if rt.distributed else "",
            len(self.train_frame),
            len(self.val_frame),
            self.num_workers,
        )
        started = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            if self.stopped_early:
                break
            record = {"epoch": epoch + 1, **self.train_one_epoch(epoch)}
            metrics = self.evaluate()
            record.update({k: v for k, v in metrics.items() if not k.startswith("_")})
            if self.early.update(epoch + 1, record[self.early.metric], record["val_loss"]):
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            record["best"] = self.early.best_epoch == epoch + 1
            self.history.append(record)
            self.stopped_early = self.early.should_stop
            if rt.is_main:
                ckpt.save(self.checkpoint_dir, self._checkpoint_payload(epoch))
            distributed.barrier(rt)
            if rt.is_main:
                log.info(_epoch_line(record, cfg.epochs))
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(record))
        if self.stopped_early:
            log.info(
                "early stopping: no %s improvement for %d epochs (best epoch %d)",
                self.early.metric,
                cfg.patience,
                self.early.best_epoch,
            )
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        final = self.evaluate()
        elapsed = time.perf_counter() - started
        uri = self.output_uri
        if rt.is_main:
            uri = self._write_bundle(final, elapsed, torch)
        distributed.barrier(rt)
        return uri

    # -- outputs -----------------------------------------------------------------------------------------------
    def _lineage(self, torch) -> dict[str, Any]:
        import torchvision

        import visionops

        device = str(self.runtime.device)
        if self.runtime.is_cuda:
            device += f" ({torch.cuda.get_device_name(self.runtime.device)})"
        return {
            "dataset_uri": self.dataset_uri,
            "dataset_version": self.dataset.version,
            "golden_version": self.dataset.golden_version,
            "code_version": visionops.__version__,
            "git_commit": git_commit(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "device": device,
            "amp": None if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
            "world_size": self.runtime.world_size,
            "parent_model": self.parent,
            "pretrained": self.config.pretrained,
            "pretrained_weights": None if self.pretrained is None else self.pretrained.lineage(),
            "train_images": len(self.train_frame),
            "val_images": len(self.val_frame),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _write_bundle(self, final: dict[str, Any], elapsed: float, torch) -> str:
        from visionops.bundle import save_bundle
        from visionops.training.report import write_reports

        summary = {
            "best_epoch": self.early.best_epoch,
            "best_metric": self.early.metric,
            "best_value": self.early.best,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "seconds": round(elapsed, 2),
            "class_weights": self.class_weights,
            "head_replaced": self.replaced_head,
            "val": {k: v for k, v in final.items() if not k.startswith("_")},
        }
        meta = {
            "architecture": self.config.architecture,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "preprocess": self.spec.to_dict(),
            "threshold": 0.5,
            "threshold_info": {
                "method": "default",
                "note": "argmax (0.5) until evaluation chooses a threshold",
            },
            "config": self.config.to_dict(),
            "lineage": self._lineage(torch),
            "history": self.history,
            "training": summary,
        }
        with tempfile.TemporaryDirectory(prefix="visionops-train-") as tmp:
            files = write_reports(Path(tmp), meta, self.val_frame, final["_indices"], final["_probs"])
            uri = save_bundle(self.model, meta, self.output_uri, extra_files=files)
        val = summary["val"]
        log.info(
            "bundle written to %s (val_auc=%s val_loss=%.4f, best epoch %d)",
            uri,
            _fmt(val["val_auc"]),
            val["val_loss"],
            self.early.best_epoch,
        )
        return uri


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {record['epoch']}/{epochs} train_loss={record['train_loss']:.4f} "
        f"val_loss={record['val_loss']:.4f} val_auc={_fmt(record['val_auc'])} val_acc={record['val_acc']:.4f} "
        f"lr={record['lr']:.2e} images/s={record['images_per_s']:.1f}{' *best' if record['best'] else ''}"
    )


def train(
    dataset_uri: str,
    output_uri: str,
    config: TrainConfig | None = None,
    *,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Train a classifier on the dataset at ``dataset_uri`` and write a model bundle at ``output_uri``.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DDP; only rank 0 writes. Checkpoints go to
    ``config.checkpoint_dir`` (default ``OUTPUT.checkpoints``); ``config.resume`` continues from the last one.
    ``on_epoch_end`` receives each epoch's record (e.g. to log metrics elsewhere). With
    ``config.drift_reference`` the bundle also gets its drift reference profile (``visionops.drift``).
    Returns the bundle URI.
    """
    config = config or TrainConfig()
    runtime = distributed.setup(config.device)
    try:
        uri = Trainer(dataset_uri, output_uri, config, runtime, on_epoch_end).run()
        if config.drift_reference and runtime.is_main:
            # the monitor compares live traffic with this profile; every trained model carries one
            from visionops.drift.reference import attach_reference

            attach_reference(uri, dataset_uri, progress=config.progress)
        return uri
    finally:
        distributed.teardown(runtime)
