"""What does running the pipeline through kfp.local cost over calling the same component bodies in-process?

Side by side, in one run, on the same synthetic data and the local recipe:

1. compile: seconds to build and compile the pipeline IR;
2. in-process: every component body (``component.python_func``) called in this process, artifacts in a temp dir;
3. kfp.local: ``visionops.pipeline.local.run_local`` — the same bodies, each in its own subprocess (what
   ``make run`` does), with kfp's executor input/output handling.

The ratio kfp.local / in-process is the price of running the real KFP graph locally (a fresh interpreter
and library imports per step).

    .venv/bin/python benchmarks/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def in_process(data: str, work: Path, params: dict) -> tuple[float, dict[str, float], bool]:
    """Call each component body directly, like the pipeline wires them; return (seconds, per step, blessed)."""
    from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Markdown, Metrics, Model
    from visionops.pipeline import components as c

    def art(cls, name):
        return cls(uri=str(work / name))

    steps: dict[str, float] = {}
    started = time.perf_counter()

    def timed(name, fn, **kwargs):
        t = time.perf_counter()
        out = fn(**kwargs)
        steps[name] = time.perf_counter() - t
        return out

    dataset = art(Dataset, "dataset")
    timed(
        "ingest",
        c.ingest.python_func,
        source_uri=data,
        golden_uri="",
        val_fraction=params["val_fraction"],
        test_fraction=params["test_fraction"],
        seed=0,
        dataset=dataset,
    )
    timed(
        "validate",
        c.validate.python_func,
        dataset=dataset,
        report=art(Markdown, "report.md"),
        report_html=art(HTML, "report.html"),
        checks=art(Metrics, "checks"),
    )
    model = art(Model, "model")
    timed(
        "train",
        c.train.python_func,
        dataset=dataset,
        architecture=params["architecture"],
        epochs=params["epochs"],
        image_size=params["image_size"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        seed=0,
        champion_uri="",
        warm_start=False,
        pretrained_uri="",
        overrides={},
        gpu_count=0,
        model=model,
    )
    candidate = art(Model, "candidate")
    blessed = timed(
        "evaluate",
        c.evaluate.python_func,
        model=model,
        dataset=dataset,
        champion_uri="",
        target_precision=params["target_precision"],
        max_p95_latency_ms=1000.0,
        max_model_mb=200.0,
        policy_overrides={},
        candidate=candidate,
        metrics=art(Metrics, "metrics"),
        classification=art(ClassificationMetrics, "classification"),
        model_card=art(Markdown, "card.md"),
        model_card_html=art(HTML, "card.html"),
        decision=art(Artifact, "decision.json"),
    )
    if blessed:
        timed("package", c.package.python_func, model=candidate, bento=art(Artifact, "bento"))
        timed(
            "deploy",
            c.deploy.python_func,
            model=candidate,
            target="local",
            namespace="",
            deployment="",
            state_dir=str(work / "deployment"),
            record=art(Artifact, "deploy.json"),
        )
    return time.perf_counter() - started, steps, bool(blessed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="300 images and 2 epochs instead of the demo recipe."
    )
    args = parser.parse_args()

    import os

    from visionops.data.synth import generate
    from visionops.pipeline.compile import compile_pipeline
    from visionops.pipeline.local import DEMO_COUNT, DEMO_SIZE, LOCAL_DEFAULTS, run_local

    count, epochs = (300, 2) if args.quick else (DEMO_COUNT, LOCAL_DEFAULTS["epochs"])
    params = {**LOCAL_DEFAULTS, "epochs": epochs, "target_precision": 0.95}
    load_before = os.getloadavg()[0]
    direct: list[float] = []
    local: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        data = generate(str(root / "data"), count=count, size=DEMO_SIZE, seed=0)

        t = time.perf_counter()
        for i in range(3):
            compile_pipeline(root / f"p{i}.yaml")
        compile_s = (time.perf_counter() - t) / 3

        # ABBA order: on a shared machine the load drifts; alternating keeps both sides under the same drift
        for i, kind in enumerate(("local", "direct", "direct", "local")):
            if kind == "direct":
                seconds, steps, blessed_direct = in_process(data, root / f"direct{i}", params)
                direct.append(seconds)
            else:
                result = run_local(root / f"local{i}", data_uri=data, params={"epochs": epochs})
                local.append(result.seconds)
    direct_s, local_s = sum(direct) / len(direct), sum(local) / len(local)

    print(
        f"pipeline benchmark ({'quick' if args.quick else 'full'}): {count} synthetic images, "
        f"{params['architecture']} {params['image_size']} px, {epochs} epochs, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"  compile (build + IR YAML)        {compile_s:8.2f} s")
    print(
        f"  in-process component bodies      {direct_s:8.1f} s   (runs {', '.join(f'{x:.1f}' for x in direct)}; "
        f"verdict {'blessed' if blessed_direct else 'refused'})"
    )
    for name, seconds in steps.items():
        print(f"      {name:<10} {seconds:8.1f} s   (last run)")
    print(
        f"  kfp.local (make run's path)      {local_s:8.1f} s   (runs {', '.join(f'{x:.1f}' for x in local)}; "
        f"verdict {'blessed' if result.blessed else 'refused'})"
    )
    print(
        f"  ratio kfp.local / in-process     {local_s / direct_s:8.2f} x   "
        f"(overhead {local_s - direct_s:+.1f} s for {len(steps)} steps)"
    )


if __name__ == "__main__":
    main()
