"""Training throughput: the real image pipeline vs the same model fed synthetic in-memory tensors.

Both sides run the SAME training step (``Trainer.train_one_epoch``: AMP + channels_last on CUDA, the optimizer,
the schedule); only the batches differ. The real side reads JPEGs through visionops.storage once into the
decoded+resized cache and feeds epochs through the DataLoader (augmentation, workers, pinned memory). A ratio
near 1 means data loading is not the bottleneck (target >= 0.9).

    .venv/bin/python benchmarks/bench_training.py [--quick] [--arch small_cnn] [--image-size 96]
        [--batch-size 32] [--device auto] [--steps 20] [--num-workers -1] [--repeats 2]

Images: ../shared/data/faces-glasses (or VISIONOPS_FACES_DIR) when present, else generated JPEGs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("VISIONOPS_FACES_DIR", ROOT.parent / "shared" / "data" / "faces-glasses"))


def write_manifest(root: Path, count: int) -> str:
    """A dataset of ``count`` train images (+ a few val) over the real photos, or generated JPEGs."""
    import numpy as np
    import pandas as pd
    from PIL import Image
    from visionops.data.manifest import write_dataset

    files: list[tuple[Path, str]] = []
    if (FACES / "glasses").is_dir():
        for label in ("glasses", "no_glasses"):
            files += [(p, label) for p in sorted((FACES / label).glob("*.jpg"))[: count // 2 + 4]]
    else:
        rng = np.random.default_rng(0)
        (root / "gen").mkdir(parents=True)
        for i in range(count + 8):
            path = root / "gen" / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)).save(path, quality=90)
            files.append((path, ("glasses", "no_glasses")[i % 2]))
    rows = []
    for i, (path, label) in enumerate(files):
        data = path.read_bytes()
        rows.append(
            {
                "path": str(path),
                "label": label,
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": 0,
                "height": 0,
                "split": "val" if i % (len(files) // 8) == 0 else "train",
                "group": "",
            }
        )
    frame = pd.DataFrame(rows)
    train_rows = frame[frame["split"] == "train"].head(count)
    frame = pd.concat([train_rows, frame[frame["split"] == "val"]])
    return write_dataset(frame, {"source": "bench"}, str(root / "dataset")).uri


def cpu_seconds() -> float:
    """User + system CPU time of this process (DataLoader workers excluded)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def synthetic_batches(trainer, steps: int, batch_size: int, image_size: int) -> list:
    """``steps`` batches of random tensors of the real batches' shape, already in memory."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = len(trainer.classes)
    return [
        (
            torch.randn(batch_size, 3, image_size, image_size, generator=g),
            torch.randint(0, n, (batch_size,), generator=g),
            torch.arange(batch_size),
        )
        for _ in range(steps)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=20, help="batches per measured epoch")
    parser.add_argument(
        "--num-workers", type=int, default=-1, help="DataLoader workers (-1 = the trainer's auto)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="measured epochs per side (median reported)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer steps (CI smoke)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = min(args.steps, 8), 1
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPUs: spinning OpenMP threads starve

    import torch
    from visionops.training import TrainConfig, distributed
    from visionops.training.loop import Trainer

    config = TrainConfig(
        architecture=args.arch,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
        amp=not args.no_amp,
        compile=args.compile,
        progress=False,
        epochs=100,
        aug_color_jitter=0.0,
    )
    runtime = distributed.setup(config.device)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        dataset = write_manifest(Path(tmp), args.steps * args.batch_size)
        trainer = Trainer(dataset, str(Path(tmp) / "out"), config, runtime)
        t0 = time.perf_counter()
        trainer._build()
        build_s = time.perf_counter() - t0
        real_loader = trainer.train_loader
        fake = synthetic_batches(trainer, len(real_loader), args.batch_size, trainer.spec.image_size)
        real, synthetic, real_cpu, synth_cpu = [], [], [], []
        for epoch in range(args.repeats + 1):  # epoch 0 warms up both sides (workers, allocator, cudnn)
            for loader, wall, cpu in ((real_loader, real, real_cpu), (fake, synthetic, synth_cpu)):
                trainer.train_loader = loader
                c0 = cpu_seconds()
                stats = trainer.train_one_epoch(epoch)
                if epoch:
                    wall.append(stats["images_per_s"])
                    cpu.append(len(loader) * args.batch_size / max(cpu_seconds() - c0, 1e-9))
    real_ips, synth_ips = statistics.median(real), statistics.median(synthetic)
    device = str(runtime.device) + (
        f" ({torch.cuda.get_device_name()})" if runtime.is_cuda else f" ({torch.get_num_threads()} threads)"
    )
    amp = None if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch.")
    print(
        f"training throughput: {args.arch} @ {trainer.spec.image_size}px, batch {args.batch_size}, "
        f"{len(real_loader)} steps x {args.repeats} epochs, device {device}, amp {amp}, "
        f"channels_last {trainer.channels_last}, workers {trainer.num_workers}"
    )
    print(
        f"  cache build (fetch+decode+resize {len(real_loader) * args.batch_size} images once): {build_s:.1f} s"
    )
    print(
        f"  real pipeline (cache + DataLoader + augmentation): {real_ips:9.1f} images/s  {[round(x, 1) for x in real]}"
    )
    print(
        f"  synthetic in-memory tensors:                      {synth_ips:9.1f} images/s  {[round(x, 1) for x in synthetic]}"
    )
    print(f"  ratio real/synthetic: {real_ips / synth_ips:.3f} (target >= 0.9)")
    if trainer.num_workers == 0:  # all work is in this process: CPU time is robust to a busy machine
        rc, sc = statistics.median(real_cpu), statistics.median(synth_cpu)
        print(
            f"  per CPU-second of this process: real {rc:.1f} vs synthetic {sc:.1f} images/cpu-s, "
            f"ratio {rc / sc:.3f}"
        )
    distributed.teardown(runtime)


if __name__ == "__main__":
    sys.exit(main())
