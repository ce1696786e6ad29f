"""Training outputs that travel in the bundle's ``reports/``: history (JSON), curves (PNG + one self-contained
HTML page), validation predictions (CSV), and the resolved config (``config.json`` at the bundle root)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visionops import reports


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss and validation metrics per epoch as a PNG (matplotlib's object API: no global backend)."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend()
    aucs = [r["val_auc"] if r["val_auc"] is not None else float("nan") for r in history]
    ax_metric.plot(epochs, aucs, marker="o", label="val ROC AUC")
    ax_metric.plot(epochs, [r["val_acc"] for r in history], marker="o", label="val accuracy")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylim(0, 1.02)
    ax_metric.set_title("validation")
    ax_metric.legend()
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    return path


def write_reports(root: Path, meta: dict[str, Any], val_frame, indices, probs) -> dict[str, Path]:
    """Write the training reports under ``root``; returns {name inside the bundle: local path}."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    history = meta["history"]
    files = {
        "config.json": root / "config.json",
        "reports/history.json": root / "history.json",
        "reports/val_predictions.csv": root / "val_predictions.csv",
    }
    files["config.json"].write_text(json.dumps(meta["config"], indent=2, sort_keys=True))
    files["reports/history.json"].write_text(json.dumps(history, indent=2))
    rows = val_frame.iloc[list(indices)]
    table = pd.DataFrame({"path": rows["path"].to_numpy(), "label": rows["label"].to_numpy()})
    for i, name in enumerate(meta["classes"]):
        table[f"prob_{name}"] = probs[:, i]
    table.to_csv(files["reports/val_predictions.csv"], index=False)
    if history:
        png = plot_history(history, root / "training_curves.png")
        files["reports/training_curves.png"] = png
        training = meta["training"]
        columns = ["epoch", "train_loss", "val_loss", "val_auc", "val_acc", "lr", "images_per_s", "best"]
        summary = [
            {
                "architecture": meta["architecture"],
                "image size": meta["preprocess"]["image_size"],
                "epochs run": training["epochs_run"],
                "best epoch": training["best_epoch"],
                f"best {training['best_metric']}": training["best_value"],
                "stopped early": training["stopped_early"],
                "device": meta["lineage"]["device"],
                "seconds": training["seconds"],
            }
        ]
        page = reports.html_page(
            f"Training: {meta['architecture']} on {meta['lineage']['dataset_version']}",
            [
                ("Summary", reports.html_table(summary)),
                (
                    "Curves",
                    f'<img alt="training curves" src="{reports.image_data_uri(png.read_bytes(), "image/png")}">',
                ),
                ("History", reports.html_table(history, columns)),
                ("Configuration", f"<pre>{reports.escape(json.dumps(meta['config'], indent=2))}</pre>"),
            ],
            subtitle=f"dataset {meta['lineage']['dataset_uri']} · golden set {meta['lineage']['golden_version']}",
        )
        files["reports/training.html"] = reports.write_text_atomic(root / "training.html", page)
    return files
