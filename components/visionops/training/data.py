"""The training data pipeline: fetch and decode each image ONCE into a resized uint8 cache, then feed epochs
from memory through a DataLoader (workers, pinned memory, persistent workers).

Why a cache: decoding full-size JPEGs every epoch is what starves an accelerator (and a 2-core CPU). Each image
is read once through :mod:`visionops.storage` (local or ``s3://``), decoded with :func:`visionops.images.decode_image`,
resized by :func:`visionops.preprocess.resize_short_side` (the first stage of both transforms) and kept as a
``uint8`` CHW tensor. That stage is then a no-op on cached images, so training-time validation sees exactly the
tensors serving computes from the original image.

Augmentation is reproducible independently of worker count and worker persistence: the sampler hands each
sample a seed derived from (seed, epoch, index), and the dataset draws its random transform from that seed.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from visionops.errors import DataError, ImageError, StorageError
from visionops.preprocess import PreprocessSpec, resize_short_side

log = logging.getLogger(__name__)


def resize_for_cache(img, spec: PreprocessSpec):
    """PIL RGB -> uint8 CHW tensor after the transforms' shared first stage (short side at ``resize_size``)."""
    from torchvision.transforms import v2

    return v2.functional.pil_to_tensor(resize_short_side(spec)(img)).contiguous()


def _cache_file(cache_dir: Path, sha256: str, spec: PreprocessSpec) -> Path:
    key = hashlib.sha256(f"{sha256}:{spec.resize_size}:{spec.interpolation}".encode()).hexdigest()[:24]
    return cache_dir / key[:2] / f"{key}.npy"


def _load_one(path: str, sha256: str, spec: PreprocessSpec, cache_dir: Path | None):
    import numpy as np
    import torch

    from visionops import storage
    from visionops.images import decode_image

    cached = _cache_file(cache_dir, sha256, spec) if cache_dir and sha256 else None
    if cached is not None and cached.is_file():
        try:
            return torch.from_numpy(np.load(cached, allow_pickle=False))
        except (OSError, ValueError):
            log.warning("image cache entry %s is unreadable; decoding again", cached)
    try:
        tensor = resize_for_cache(decode_image(storage.read_bytes(path)), spec)
    except (ImageError, StorageError) as exc:
        raise DataError(
            f"cannot load training image {path}: {exc} (re-run ingestion to quarantine it)"
        ) from exc
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{id(tensor)}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, tensor.numpy(), allow_pickle=False)
        tmp.replace(cached)
    return tensor


def build_cache(
    paths: list[str],
    sha256s: list[str] | None,
    spec: PreprocessSpec,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 8,
    progress: bool = False,
    desc: str = "caching images",
) -> list[Any]:
    """Fetch, decode and resize every image once (threads: I/O and PIL decoding release the GIL).

    Returns uint8 CHW tensors in the order of ``paths``. With ``cache_dir`` the tensors are also kept as
    ``.npy`` files keyed by content hash and resize settings, so a second run (or a resumed one) skips decoding.
    """
    from tqdm.auto import tqdm

    cache = Path(cache_dir) if cache_dir else None
    shas = sha256s or [""] * len(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(lambda ps: _load_one(ps[0], ps[1], spec, cache), zip(paths, shas, strict=True))
        return list(tqdm(jobs, total=len(paths), desc=desc, disable=not progress, leave=False))


class CachedImageDataset:
    """A map-style dataset over cached uint8 tensors; items are ``(tensor, label, index)``.

    An item key is an index or an ``(index, sample_seed)`` pair (from :class:`EpochSampler`); with a seed the
    random transform is drawn from it, so augmentation does not depend on which worker runs it.
    """

    def __init__(self, images: list[Any], labels: list[int], transform) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        import torch

        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        image = self.images[index]
        if sample_seed is None:
            x = self.transform(image)
        else:
            # Seed only the CPU generator (torch.manual_seed also walks every device backend: ~0.6 ms a call)
            # and restore it: with num_workers=0 this runs in the training process, whose RNG drives dropout.
            generator = torch.default_generator
            saved = generator.get_state()
            generator.manual_seed(sample_seed)
            try:
                x = self.transform(image)
            finally:
                generator.set_state(saved)
        return x.as_subclass(torch.Tensor), self.labels[index], index


class EpochSampler:
    """Shuffles (per epoch) and shards (per DDP rank) via ``DistributedSampler``; yields ``(index, seed)`` pairs.

    Call :meth:`set_epoch` before each epoch. The same (seed, epoch) gives the same order and the same
    per-sample augmentation seeds, whether or not the run was interrupted and resumed.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> None:
        from torch.utils.data import DistributedSampler

        self.seed = seed
        self.inner = DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for index in self.inner:
            yield index, (base + index) % (2**63 - 1)


def make_loader(
    dataset: CachedImageDataset,
    sampler: EpochSampler,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool,
    seed: int,
):
    """A DataLoader with the settings that keep an accelerator fed.

    Its own generator keeps worker seeding off the global RNG (which drives dropout), so resuming is exact.
    """
    import torch
    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
