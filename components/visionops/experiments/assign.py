"""Assignment of traffic to variants: per request, per sticky unit (hash + salt), or by Thompson sampling.

A sticky unit (camera or worker id from a header) is hashed with a per-experiment salt, so a unit always
sees the same variant, and a new experiment (new salt) reshuffles units independently of the last one.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass, field

from visionops.errors import ConfigError

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
    """Beta posteriors of each variant's live precision of the positive class (from feedback).

    Feedback on a request whose answer was the positive class is a success when the true label is
    positive. Traffic shares come from Thompson sampling with a floor share per variant; a variant whose
    precision is credibly below the target (posterior P(precision >= target) < 0.05) is capped.
    """

    variants: list[str]
    target: float = 0.95
    floor: float = 0.05
    cap: float = 0.05
    prior: tuple[float, float] = (1.0, 1.0)
    successes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, variant: str, correct: bool) -> None:
        with self._lock:
            bucket = self.successes if correct else self.failures
            bucket[variant] = bucket.get(variant, 0) + 1

    def failing(self, variant: str) -> bool:
        """True when the variant credibly fails the precision constraint."""
        from scipy import stats

        a = self.prior[0] + self.successes.get(variant, 0)
        b = self.prior[1] + self.failures.get(variant, 0)
        return bool(stats.beta.sf(self.target, a, b) < 0.05)

    def shares(self, draws: int = 2000, seed: int | None = None) -> dict[str, float]:
        """Traffic shares: Thompson win probabilities, then floors and caps applied."""
        import numpy as np

        rng = np.random.default_rng(seed)
        samples = np.stack(
            [
                rng.beta(
                    self.prior[0] + self.successes.get(v, 0), self.prior[1] + self.failures.get(v, 0), draws
                )
                for v in self.variants
            ]
        )
        wins = np.bincount(samples.argmax(axis=0), minlength=len(self.variants)) / draws
        shares = dict(zip(self.variants, wins.tolist(), strict=True))
        return apply_floor_and_cap(
            shares, self.floor, {v: self.cap for v in self.variants if self.failing(v)}
        )


def apply_floor_and_cap(shares: dict[str, float], floor: float, caps: dict[str, float]) -> dict[str, float]:
    """Every variant gets at least ``floor``; capped variants get at most their cap; the rest is shared
    among the uncapped variants in proportion to their shares."""
    names = list(shares)
    floor = min(floor, 1.0 / len(names))
    out = {n: max(shares[n], floor) for n in names}
    for name, cap in caps.items():
        out[name] = min(out[name], max(cap, 0.0))
    free = [n for n in names if n not in caps]
    fixed = sum(out[n] for n in names if n in caps)
    if free:
        base = sum(out[n] for n in free) or 1.0
        for n in free:
            out[n] = out[n] / base * (1.0 - fixed)
        # raising some to the floor after rescaling can only lower the others slightly; repeat once
        for n in free:
            out[n] = max(out[n], floor)
        total_free = sum(out[n] for n in free)
        for n in free:
            out[n] = out[n] / total_free * (1.0 - fixed)
    else:
        total = sum(out.values()) or 1.0
        out = {n: v / total for n, v in out.items()}
    return out


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
