"""Behavioural tests of a model (Made-With-ML style), run as part of evaluation.

- invariance: a small brightness change (+/- ``delta``) must not flip the decision at the chosen threshold;
  measured on golden images of every class (a class-stratified sample: the manifest is sorted by label, so
  its first rows are one class only); rate = the worst class's share of unchanged answers, and the
  safety-critical flip (a non-positive image becoming positive) is counted on its own.
- directional: the synthetic generator draws the same face with and without glasses
  (:func:`visionops.data.synth.render_pair`); the positive-class probability must be higher with glasses;
  rate = share of pairs where it is.
- minimum functionality: easy cases of the model's own domain (a curated set the user provides, e.g. clear
  photos, as an ImageFolder) must be answered correctly at the chosen threshold; rate = share answered
  correctly. Without a curated set it is skipped with the reason: synthetic cartoon faces never decide the
  verdict of a model trained on photos.

The directional test needs the synthetic generator and a positive class named like the one it draws
(:data:`visionops.policy.POSITIVE_CLASS`); otherwise it is reported as skipped with the reason. It is report-only by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visionops.evaluation.metrics import decide
from visionops.policy import POSITIVE_CLASS

#: The positive class the synthetic generator draws (visionops.data.synth labels its faces with the policy's).
SYNTH_POSITIVE = POSITIVE_CLASS


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "rate": None, "detail": reason}


def invariance(
    bundle, images: list, threshold: float, *, delta: float = 0.1, labels: list[str] | None = None
) -> dict[str, Any]:
    """Share of images whose decision survives brightness x(1 - delta) and x(1 + delta), per true class
    (``labels``; one pooled class when not given); the rate is the worst class's."""
    from PIL import ImageEnhance

    if not images:
        return _skipped("no golden images")
    pos = bundle.positive_index
    labels = list(labels) if labels is not None else ["all"] * len(images)
    base = decide(bundle.score_images(images, batch_size=32), pos, threshold)
    unchanged = np.ones(len(images), dtype=bool)
    to_positive = np.zeros(len(images), dtype=bool)
    for factor in (1 - delta, 1 + delta):
        changed = [ImageEnhance.Brightness(img).enhance(factor) for img in images]
        answer = decide(bundle.score_images(changed, batch_size=32), pos, threshold)
        unchanged &= answer == base
        to_positive |= (base != pos) & (answer == pos)
    names = np.asarray(labels)
    per_class = {
        str(c): {"n": int((names == c).sum()), "rate": float(unchanged[names == c].mean())}
        for c in sorted(set(labels))
    }
    negatives = names != bundle.positive_class
    return {
        "status": "ran",
        "rate": min(v["rate"] for v in per_class.values()),
        "n": len(images),
        "flipped": int((~unchanged).sum()),
        "per_class": per_class,
        "flipped_to_positive": int(to_positive.sum()),
        "flipped_to_positive_true_negatives": int((to_positive & negatives).sum()),
        "detail": f"brightness x{1 - delta:g} and x{1 + delta:g}; {int((~unchanged).sum())} of "
        f"{len(images)} answers flipped ("
        + ", ".join(f"{c}: {v['rate']:.3f} of {v['n']} unchanged" for c, v in per_class.items())
        + f"); {int((to_positive & negatives).sum())} images without {bundle.positive_class} became "
        f"{bundle.positive_class} (the safety-critical flip)",
    }


def minimum_functionality(bundle, images: list, labels: list[str], threshold: float, source: str) -> dict:
    """Share of curated, easy images of the model's own domain answered correctly at ``threshold``."""
    if not images:
        return _skipped(
            "no curated set of the model's own domain given (GatePolicy.functionality_set, an ImageFolder "
            "of clear cases); synthetic faces are never used to judge a photo model"
        )
    predicted = bundle.classes
    answers = [
        predicted[i]
        for i in decide(bundle.score_images(images, batch_size=32), bundle.positive_index, threshold)
    ]
    correct = np.asarray([a == y for a, y in zip(answers, labels, strict=True)])
    return {
        "status": "ran",
        "rate": float(correct.mean()),
        "n": len(images),
        "detail": f"{int(correct.sum())} of {len(images)} curated images of {source} answered correctly at "
        f"threshold {threshold:.4g}",
    }


def _pairs(count: int, size: int):
    try:
        from visionops.data.synth import render_pair
    except ImportError as exc:
        return None, f"synthetic generator unavailable ({exc})"
    return [render_pair(seed, size) for seed in range(10_000, 10_000 + count)], ""


def synthetic_tests(bundle, threshold: float, *, count: int = 50) -> dict[str, dict[str, Any]]:
    """The directional result on ``count`` synthetic face pairs."""
    if bundle.positive_class != SYNTH_POSITIVE:
        reason = f"positive class is {bundle.positive_class!r}; the generator draws {SYNTH_POSITIVE!r}"
        return {"directional": _skipped(reason)}
    size = int(min(256, max(64, bundle.preprocess.resize_size)))
    pairs, reason = _pairs(count, size)
    if pairs is None:
        return {"directional": _skipped(reason)}
    with_p = bundle.predict_proba([p[0] for p in pairs])
    without_p = bundle.predict_proba([p[1] for p in pairs])
    pos = bundle.positive_index
    higher = with_p[:, pos] > without_p[:, pos]
    return {
        "directional": {
            "status": "ran",
            "rate": float(higher.mean()),
            "n": len(pairs),
            "mean_increase": float((with_p[:, pos] - without_p[:, pos]).mean()),
            "detail": f"{int(higher.sum())} of {len(pairs)} synthetic pairs: P({SYNTH_POSITIVE}) higher with glasses",
        },
    }


def run_behaviour(
    bundle,
    golden_images: list,
    threshold: float,
    *,
    samples: int = 50,
    delta: float = 0.1,
    golden_labels: list[str] | None = None,
    curated: tuple[list, list[str], str] | None = None,
) -> dict[str, Any]:
    """All behavioural tests; each entry has ``status`` (ran/skipped), ``rate`` and ``detail``.

    ``golden_images`` should be a class-stratified sample (with ``golden_labels``); ``curated`` is the
    minimum-functionality set (images, labels, where it came from)."""
    labels = None if golden_labels is None else golden_labels[:samples]
    out = {"invariance": invariance(bundle, golden_images[:samples], threshold, delta=delta, labels=labels)}
    out.update(synthetic_tests(bundle, threshold, count=samples))
    images, curated_labels, source = curated or ([], [], "")
    out["minimum_functionality"] = minimum_functionality(bundle, images, curated_labels, threshold, source)
    return out
