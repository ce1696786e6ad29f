"""Per-epoch checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer, scheduler and grad-scaler states, the RNG states (torch, CUDA, numpy,
Python: all stored as tensors so that ``torch.load(..., weights_only=True)`` reads them; nothing is unpickled),
the early-stopping state, the best weights so far and the history. It is written atomically (a temp file and a
rename locally; a single PUT on S3), so a node preempted mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import random
from typing import Any

from visionops import storage
from visionops.errors import ConfigError

LAST = "last.pt"
CONFIG = "config.json"


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and Python, as tensors."""
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_meta": torch.tensor([version, 0 if gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_cached": torch.tensor([np_cached], dtype=torch.float64),
    }
    if np_name != "MT19937":  # pragma: no cover - numpy's legacy global RNG is always MT19937
        state.pop("numpy_keys")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, has_gauss = (int(v) for v in state["python_meta"].tolist())
    gauss = float(state["python_gauss"][0]) if has_gauss else None
    random.setstate((version, tuple(int(v) for v in state["python_mt"].tolist()), gauss))
    if "numpy_keys" in state:
        pos, np_has_gauss = (int(v) for v in state["numpy_meta"].tolist())
        np.random.set_state(
            (
                "MT19937",
                state["numpy_keys"].numpy().astype(np.uint32),
                pos,
                np_has_gauss,
                float(state["numpy_cached"][0]),
            )
        )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save(checkpoint_dir: str, payload: dict[str, Any]) -> str:
    """Write ``payload`` as ``<checkpoint_dir>/last.pt`` atomically; returns its URI."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    uri = storage.join(checkpoint_dir, LAST)
    storage.write_bytes(uri, buffer.getvalue())
    return uri


def load(checkpoint_dir: str) -> dict[str, Any] | None:
    """The last checkpoint in ``checkpoint_dir`` (``weights_only=True``), or None when there is none."""
    import torch

    uri = storage.join(checkpoint_dir, LAST)
    if not storage.exists(uri):
        return None
    try:
        return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"checkpoint {uri} cannot be read ({exc}); delete it to start over") from exc


def write_config(checkpoint_dir: str, config: dict[str, Any]) -> None:
    storage.write_text(storage.join(checkpoint_dir, CONFIG), json.dumps(config, indent=2, sort_keys=True))


#: Fields that may change between an interrupted run and its resumption (they don't change the maths).
RESUME_MAY_CHANGE = {
    "resume",
    "checkpoint_dir",
    "num_workers",
    "decode_workers",
    "cache_dir",
    "progress",
    "epochs",
    "patience",
}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], uri: str) -> None:
    """Refuse to resume a checkpoint made with a different recipe (it would not continue the same run)."""
    diff = sorted(
        k for k in set(saved) | set(current) if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise ConfigError(
            f"cannot resume from {uri}: the config differs ({details}); use the same settings, "
            "or another checkpoint_dir to start a new run"
        )
