"""A bounded window of feature rows: a columnar ring buffer, by count and optionally by age.

Memory is fixed at construction (``capacity`` rows x columns); appending overwrites the oldest rows, so a long
stream never grows it. Snapshots copy the arrays under the lock (fast) so that the drift worker computes on
its own copy while ingestion goes on.
"""

from __future__ import annotations

import math
import threading
import time

from visionops.errors import ConfigError


class FeatureWindow:
    """The last ``capacity`` rows (and, with ``max_age_s``, only those younger than that)."""

    def __init__(self, columns: dict[str, str], capacity: int, *, max_age_s: float | None = None) -> None:
        import numpy as np

        if capacity < 1:
            raise ConfigError(f"window capacity must be at least 1 row, got {capacity}")
        if max_age_s is not None and max_age_s <= 0:
            raise ConfigError(f"window max age must be > 0 seconds, got {max_age_s}")
        self.capacity = int(capacity)
        self.max_age_s = max_age_s
        self.num_columns = [c for c, k in columns.items() if k == "num"]
        self.cat_columns = [c for c, k in columns.items() if k == "cat"]
        self._num = np.full((self.capacity, len(self.num_columns)), np.nan, dtype=np.float64)
        self._cat = np.empty((self.capacity, len(self.cat_columns)), dtype=object)
        self._ts = np.zeros(self.capacity, dtype=np.float64)
        self._next = 0  # slot the next row goes to
        self._count = 0  # rows held (<= capacity)
        self.total = 0  # rows ever appended
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    def append(self, rows: list[dict], *, now: float | None = None) -> None:
        """Add rows (dicts holding every window column; extra keys ignored). ``timestamp`` keys are used
        for the age limit when present, else ``now``."""
        now = time.time() if now is None else now
        num_cols, cat_cols = self.num_columns, self.cat_columns
        with self._lock:
            for row in rows:
                i = self._next
                num = self._num[i]
                for j, name in enumerate(num_cols):
                    num[j] = row[name]
                for j, name in enumerate(cat_cols):
                    self._cat[i, j] = str(row[name])
                ts = row.get("timestamp")
                self._ts[i] = float(ts) if isinstance(ts, int | float) and math.isfinite(ts) else now
                self._next = (i + 1) % self.capacity
                self._count = min(self._count + 1, self.capacity)
                self.total += 1

    def snapshot(self, *, now: float | None = None):
        """The rows held, oldest first, as a DataFrame (a copy; with an age limit, only recent rows)."""
        import numpy as np
        import pandas as pd

        with self._lock:
            if self._count < self.capacity:
                order = np.arange(self._count)
            else:
                order = np.concatenate([np.arange(self._next, self.capacity), np.arange(0, self._next)])
            num, cat, ts = self._num[order], self._cat[order], self._ts[order]
        if self.max_age_s is not None:
            keep = ts >= (time.time() if now is None else now) - self.max_age_s
            num, cat, ts = num[keep], cat[keep], ts[keep]
        frame = pd.DataFrame(num, columns=self.num_columns)
        for j, name in enumerate(self.cat_columns):
            frame[name] = cat[:, j]
        return frame

    def clear(self) -> None:
        with self._lock:
            self._next = self._count = 0
