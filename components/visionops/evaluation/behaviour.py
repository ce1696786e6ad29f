"""Behavioural tests of a model (Made-With-ML style), run as part of evaluation.

- invariance: a small brightness change (+/- ``delta``) must not flip the decision at the chosen threshold;
  rate = share of golden images whose answer is unchanged by both changes.
- directional: the synthetic generator draws the same face with and without glasses
  (:func:`visionops.data.synth.render_pair`); the positive-class probability must be higher with glasses;
  rate = share of pairs where it is.
- minimum functionality: easy cases (clear synthetic faces, both sides of each pair) must be answered
  correctly at the chosen threshold; rate = share answered correctly.

Directional and minimum-functionality tests need the synthetic generator and a positive class named
``glasses`` (what the generator draws); otherwise they are reported as skipped with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visionops.evaluation.metrics import decide

SYNTH_POSITIVE = "glasses"


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "rate": None, "detail": reason}


def invariance(bundle, images: list, threshold: float, *, delta: float = 0.1) -> dict[str, Any]:
    """Share of images whose decision survives brightness x(1 - delta) and x(1 + delta)."""
    from PIL import ImageEnhance

    if not images:
        return _skipped("no golden images")
    pos = bundle.positive_index
    base = decide(bundle.score_images(images, batch_size=32), pos, threshold)
    unchanged = np.ones(len(images), dtype=bool)
    for factor in (1 - delta, 1 + delta):
        changed = [ImageEnhance.Brightness(img).enhance(factor) for img in images]
        unchanged &= decide(bundle.score_images(changed, batch_size=32), pos, threshold) == base
    return {
        "status": "ran",
        "rate": float(unchanged.mean()),
        "n": len(images),
        "flipped": int((~unchanged).sum()),
        "detail": f"brightness x{1 - delta:g} and x{1 + delta:g}; {int((~unchanged).sum())} of "
        f"{len(images)} answers flipped",
    }


def _pairs(count: int, size: int):
    try:
        from visionops.data.synth import render_pair
    except ImportError as exc:
        return None, f"synthetic generator unavailable ({exc})"
    return [render_pair(seed, size) for seed in range(10_000, 10_000 + count)], ""


def synthetic_tests(bundle, threshold: float, *, count: int = 50) -> dict[str, dict[str, Any]]:
    """Directional and minimum-functionality results on ``count`` synthetic face pairs."""
    if bundle.positive_class != SYNTH_POSITIVE:
        reason = f"positive class is {bundle.positive_class!r}; the generator draws {SYNTH_POSITIVE!r}"
        return {"directional": _skipped(reason), "minimum_functionality": _skipped(reason)}
    size = int(min(256, max(64, bundle.preprocess.resize_size)))
    pairs, reason = _pairs(count, size)
    if pairs is None:
        return {"directional": _skipped(reason), "minimum_functionality": _skipped(reason)}
    with_p = bundle.predict_proba([p[0] for p in pairs])
    without_p = bundle.predict_proba([p[1] for p in pairs])
    pos = bundle.positive_index
    higher = with_p[:, pos] > without_p[:, pos]
    correct_with = decide(with_p, pos, threshold) == pos
    correct_without = decide(without_p, pos, threshold) != pos
    mft = np.concatenate([correct_with, correct_without])
    return {
        "directional": {
            "status": "ran",
            "rate": float(higher.mean()),
            "n": len(pairs),
            "mean_increase": float((with_p[:, pos] - without_p[:, pos]).mean()),
            "detail": f"{int(higher.sum())} of {len(pairs)} synthetic pairs: P({SYNTH_POSITIVE}) higher with glasses",
        },
        "minimum_functionality": {
            "status": "ran",
            "rate": float(mft.mean()),
            "n": len(mft),
            "with_glasses_called_positive": float(correct_with.mean()),
            "without_glasses_called_negative": float(correct_without.mean()),
            "detail": f"{int(mft.sum())} of {len(mft)} clear synthetic faces answered correctly at threshold "
            f"{threshold:.4g}",
        },
    }


def run_behaviour(
    bundle, golden_images: list, threshold: float, *, samples: int = 50, delta: float = 0.1
) -> dict[str, Any]:
    """All behavioural tests; each entry has ``status`` (ran/skipped), ``rate`` and ``detail``."""
    out = {"invariance": invariance(bundle, golden_images[:samples], threshold, delta=delta)}
    out.update(synthetic_tests(bundle, threshold, count=samples))
    return out
