"""Labeling loop costs, measured side by side in one run on the same captured images:

* selection using the predictions serving stored with each capture vs selection that has to score every image
  with the model (same images, same budget) -> how much the stored predictions save;
* pre-labeling the selected images with the bundle;
* importing a Label Studio export of the batch (parse, validate, agreement report, labeled batch).

Images: the real face photos (../shared/data/faces-glasses, copied as captures into a temp dir) when present,
else synthetic noise JPEGs. The model is a randomly initialised bundle (its speed, not its accuracy, counts).

    .venv/bin/python benchmarks/bench_labeling.py [--quick] [--images N] [--arch tiny_cnn|mobilenet_v3_small]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT.parent / "shared" / "data" / "faces-glasses"
DAY = "2026-11-20"


def make_captures(root: Path, count: int, model_version: str, threshold: float) -> str:
    """``count`` captures (<root>/<day>/<id>.jpg + .json) with stored predictions, from the real photos."""
    rng = np.random.default_rng(0)
    folder = root / DAY
    folder.mkdir(parents=True)
    if (FACES / "glasses").is_dir():
        photos = sorted(FACES.glob("*/*.jpg"))
        photos = [photos[i] for i in rng.permutation(len(photos))[:count]]
        blobs = [p.read_bytes() for p in photos]
        source = f"real photos ({FACES})"
    else:
        from PIL import Image
        from visionops.images import encode_image

        blobs = [
            encode_image(Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)))
            for _ in range(count)
        ]
        source = "synthetic noise JPEGs (real photos not found)"
    for i, blob in enumerate(blobs):
        p = float(rng.uniform())
        rid = f"req-{i:05d}"
        (folder / f"{rid}.jpg").write_bytes(blob)
        record = {
            "request_id": rid,
            "time": f"{DAY}T10:00:00+00:00",
            "model_version": model_version,
            "label": "glasses" if p >= threshold else "no_glasses",
            "probability": p,
            "probabilities": {"glasses": p, "no_glasses": 1 - p},
            "positive_class": "glasses",
            "threshold": threshold,
        }
        (folder / f"{rid}.json").write_text(json.dumps(record))
    print(f"images: {len(blobs)} {source}")
    return str(root)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images, tiny_cnn")
    parser.add_argument("--images", type=int, default=1000, help="number of captured images")
    parser.add_argument(
        "--budget", type=int, default=0, help="review budget (default: a fifth of the images)"
    )
    parser.add_argument("--arch", default="mobilenet_v3_small", help="architecture of the (random) bundle")
    args = parser.parse_args()
    if args.quick:
        args.images, args.arch = 200, "tiny_cnn"
    budget = args.budget or max(1, args.images // 5)
    logging.basicConfig(level=logging.WARNING)

    import torch
    from visionops.bundle import read_meta, save_bundle
    from visionops.labeling import export, import_reviews, prelabel, select
    from visionops.models import create_model, get_entry

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="bench-labeling-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = create_model(args.arch, 2)
        bundle = save_bundle(
            model,
            {
                "architecture": args.arch,
                "classes": ["glasses", "no_glasses"],
                "preprocess": get_entry(args.arch).preprocess,
            },
            str(tmp / "bundle"),
        )
        version = read_meta(bundle)["model_version"]
        captures = make_captures(tmp / "cap", args.images, version, 0.5)
        print(
            f"model: {args.arch} (random weights), budget {budget}, torch threads {torch.get_num_threads()}"
        )

        stored, t_stored = timed(lambda: select(captures, str(tmp / "s1"), budget=budget, bundle_uri=bundle))
        # the same captures, but the stored predictions came from another model -> every image is scored
        other = tmp / "b2"
        import shutil

        shutil.copytree(bundle, other)
        meta = json.loads((other / "bundle.json").read_text())
        meta["model_version"] = "m-other"
        (other / "bundle.json").write_text(json.dumps(meta))
        scored, t_scored = timed(
            lambda: select(captures, str(tmp / "s2"), budget=budget, bundle_uri=str(other))
        )
        assert stored.meta["counts"]["scored_by_model"] == 0
        assert scored.meta["counts"]["scored_by_model"] == args.images

        pre, t_pre = timed(lambda: prelabel(stored.uri, bundle))
        tasks_uri = export(pre.uri, str(tmp / "tasks.json"))
        tasks = json.loads(Path(tasks_uri).read_text())
        flip = set(range(0, len(tasks), 10))
        for i, task in enumerate(tasks):
            label = task["predictions"][0]["result"][0]["value"]["choices"][0]
            if i in flip:
                label = "no_glasses" if label == "glasses" else "glasses"
            result = [dict(task["predictions"][0]["result"][0], value={"choices": [label]})]
            task["annotations"] = [{"id": i, "completed_by": 1, "result": result}]
        (tmp / "export.json").write_text(json.dumps(tasks))
        imported, t_imp = timed(
            lambda: import_reviews(str(tmp / "export.json"), selection_uri=pre.uri, output=str(tmp / "imp"))
        )

    n = args.images
    print()
    print(f"{'step':44s} {'seconds':>8s} {'images/s':>10s}")
    print(f"{'select, stored capture predictions':44s} {t_stored:8.2f} {n / t_stored:10.1f}")
    print(f"{'select, every image scored by the model':44s} {t_scored:8.2f} {n / t_scored:10.1f}")
    print(f"{'prelabel the selection':44s} {t_pre:8.2f} {budget / t_pre:10.1f}")
    print(f"{'import Label Studio export + report':44s} {t_imp:8.2f} {budget / t_imp:10.1f}")
    print()
    print(f"ratio: scoring every image / using stored predictions = {t_scored / t_stored:.2f}x")
    print(
        f"agreement on the batch: accuracy {imported.agreement['all']['accuracy']['value']:.3f} "
        f"(expected {1 - len(flip) / len(tasks):.3f} from the scripted flips)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
