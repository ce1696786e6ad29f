"""Assignment of traffic to variants: per request, per sticky unit (hash + salt), or by a constrained
Thompson sampler (maximise recall subject to the precision target), plus the pending-feedback map.

A sticky unit (camera or worker id from a header) is hashed with a per-experiment salt, so a unit always
sees the same variant, and a new experiment (new salt) reshuffles units independently of the last one.
"""

from __future__ import annotations

import collections
import hashlib
import random
import threading
from dataclasses import dataclass, field

import numpy as np

from visionops.errors import ConfigError
from visionops.policy import TARGET_PRECISION

POLICIES = ("weights", "sticky", "thompson")


def unit_fraction(unit_id: str, salt: str) -> float:
    """A uniform number in [0, 1) determined by (salt, unit_id)."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_by_fraction(fraction: float, weights: dict[str, float]) -> str:
    """The variant whose cumulative weight interval contains ``fraction`` (variants in sorted order)."""
    total = sum(weights.values())
    acc = 0.0
    names = sorted(weights)
    for name in names:
        acc += weights[name] / total
        if fraction < acc:
            return name
    return names[-1]


def parse_weights(text: str) -> dict[str, float]:
    """``"champion=90,challenger=10"`` -> ``{"champion": 90.0, "challenger": 10.0}``."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ConfigError(f"bad weight {part!r}; expected name=number, e.g. a=90,b=10") from None
    if len(weights) < 1 or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError(f"weights {text!r} need at least one variant and a positive total")
    return weights


@dataclass
class ThompsonState:
    """A constrained Thompson sampler: maximise recall subject to precision >= target.

    Two Beta posteriors per variant, from feedback: precision of the positive class (feedback on a request
    the variant answered positive: success when truly positive) and recall (feedback on a truly positive
    request: success when the variant answered positive). Each draw samples both; only variants whose
    sampled precision meets the target are eligible, and the eligible one with the highest sampled recall
    wins (no variant eligible: the highest sampled precision, the nearest to feasible). Shares are win
    frequencies with a floor for every variant and a cap for variants credibly failing the target
    (P(precision >= target) < 0.05), kept in every case: when every variant fails, the control (what ran
    before the experiment) takes the rest. ``half_life`` (in feedback events) discounts old evidence for
    traffic that changes.
    """

    variants: list[str]
    target: float = TARGET_PRECISION
    floor: float = 0.05
    cap: float = 0.05
    prior: tuple[float, float] = (1.0, 1.0)
    control: str | None = None
    half_life: float | None = None
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # [prec ok, prec bad, rec ok, rec bad]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.control = self.control or self.variants[0]
        for v in self.variants:
            self.counts.setdefault(v, np.zeros(4))

    def record(self, variant: str, predicted_positive: bool, actually_positive: bool) -> None:
        """One piece of feedback: the variant's answer and the true label, both as "is it positive"."""
        tp = predicted_positive and actually_positive
        self.record_counts(variant, tp=int(tp), fp=int(predicted_positive and not actually_positive),
                           fn=int(actually_positive and not predicted_positive))  # fmt: skip

    def record_counts(self, variant: str, *, tp: int, fp: int, fn: int) -> None:
        """A batch of feedback on one variant: true positives, false positives, false negatives (true
        negatives say nothing about precision or recall). Older evidence decays by the half-life."""
        events = tp + fp + fn
        if variant not in self.counts or events == 0:
            return
        with self._lock:
            if self.half_life:
                decay = 0.5 ** (events / self.half_life)
                for counts in self.counts.values():
                    counts *= decay
            self.counts[variant] += np.array([tp, fp, tp, fn], dtype=float)

    def posterior(self, variant: str) -> tuple[float, float, float, float]:
        """(a, b) of the precision Beta and (a, b) of the recall Beta."""
        c = self.counts[variant]
        a0, b0 = self.prior
        return a0 + c[0], b0 + c[1], a0 + c[2], b0 + c[3]

    def failing(self, variant: str) -> bool:
        """True when the variant credibly fails the precision constraint."""
        return self.failing_variants([variant])[0]

    def failing_variants(self, variants: list[str] | None = None) -> list[bool]:
        """For each variant: P(precision >= target) < 0.05 under its posterior."""
        from scipy.special import betainc

        post = np.array([self.posterior(v) for v in variants or self.variants])
        return (1.0 - betainc(post[:, 0], post[:, 1], self.target) < 0.05).tolist()

    def shares(self, draws: int = 2000, seed: int | None = None) -> dict[str, float]:
        """Traffic shares: constrained Thompson win frequencies, then floors and caps applied."""
        rng = np.random.default_rng(seed)
        post = np.array([self.posterior(v) for v in self.variants])  # (k, 4)
        precision = rng.beta(post[:, 0, None], post[:, 1, None], (len(self.variants), draws))
        recall = rng.beta(post[:, 2, None], post[:, 3, None], (len(self.variants), draws))
        wins = np.bincount(constrained_winners(precision, recall, self.target), minlength=len(self.variants))
        shares = dict(zip(self.variants, (wins / draws).tolist(), strict=True))
        failing = self.failing_variants()
        caps = {v: self.cap for v, bad in zip(self.variants, failing, strict=True) if bad}
        if len(caps) == len(self.variants):
            caps.pop(self.control)
        return apply_floor_and_cap(shares, self.floor, caps)


def constrained_winners(precision: np.ndarray, recall: np.ndarray, target: float) -> np.ndarray:
    """Index of each draw's winner from sampled (k, draws) precision and recall: the highest recall among
    variants whose precision meets the target; with none eligible, the highest precision."""
    eligible = precision >= target
    best_recall = np.where(eligible, recall, -np.inf).argmax(axis=0)
    return np.where(eligible.any(axis=0), best_recall, precision.argmax(axis=0))


def apply_floor_and_cap(shares: dict[str, float], floor: float, caps: dict[str, float]) -> dict[str, float]:
    """Every variant gets at least ``floor``; capped variants get at most their cap (never under the floor);
    the rest goes to the uncapped variants in proportion to their shares, none pushed under the floor.

    With every variant capped the caps cannot all hold and the shares are only normalised: callers keep one
    variant uncapped (the constrained sampler releases its control).
    """
    names = list(shares)
    floor = min(floor, 1.0 / len(names))
    out = {n: min(max(shares[n], floor), max(cap, floor)) for n, cap in caps.items() if n in shares}
    free = [n for n in names if n not in out]
    if not free:
        total = sum(out.values()) or 1.0
        return {n: out[n] / total for n in names}
    # water-filling: scale the free variants into the remaining mass; pin any that fall under the floor
    while free:
        left = 1.0 - sum(out.values())
        raw = {n: max(shares[n], 0.0) for n in free}
        total = sum(raw.values())
        scaled = {n: (raw[n] / total if total > 0 else 1.0 / len(free)) * left for n in free}
        low = [n for n in free if scaled[n] < floor]
        if not low:
            out.update(scaled)
            break
        for n in low:
            out[n] = floor
        free = [n for n in free if n not in low]
    return {n: out[n] for n in names}


class PendingFeedback:
    """Routed requests awaiting their true label: bounded, oldest evicted first, evictions counted.

    Review can take days; past ``max_size`` pending requests the oldest is dropped (its late feedback can
    no longer reach the bandit) and ``evicted`` says how many, for the router's metrics.
    """

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self.evicted = 0
        self.unmatched = 0
        self._items: collections.OrderedDict[str, tuple[str, str | None]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, variant: str, label: str | None) -> None:
        with self._lock:
            self._items[request_id] = (variant, label)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)
                self.evicted += 1

    def pop(self, request_id: str) -> tuple[str, str | None] | None:
        """The (variant, predicted label) of a pending request, removed; None (and counted) if unknown."""
        with self._lock:
            entry = self._items.pop(request_id, None)
            if entry is None:
                self.unmatched += 1
            return entry

    def __len__(self) -> int:
        return len(self._items)


class Assigner:
    """Chooses the variant of each request according to a policy."""

    def __init__(
        self,
        weights: dict[str, float],
        *,
        policy: str = "weights",
        salt: str = "visionops",
        thompson: ThompsonState | None = None,
        seed: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown routing policy {policy!r}; valid: {', '.join(POLICIES)}")
        self.weights, self.policy, self.salt = weights, policy, salt
        self.thompson = thompson or ThompsonState(sorted(weights))
        self._rng = random.Random(seed)
        self._shares = dict(weights)
        self._lock = threading.Lock()

    def refresh(self) -> dict[str, float]:
        """Recompute Thompson shares from the feedback so far (called periodically, not per request)."""
        if self.policy == "thompson":
            shares = self.thompson.shares(seed=self._rng.randrange(2**32))
            with self._lock:
                self._shares = shares
        return dict(self._shares)

    def choose(self, unit_id: str | None = None) -> str:
        if self.policy == "sticky" and unit_id:
            return pick_by_fraction(unit_fraction(unit_id, self.salt), self.weights)
        with self._lock:
            shares = self._shares
        return pick_by_fraction(self._rng.random(), shares)
