"""Deploy-area figures, measured side by side in one run.

- render: ``kubectl kustomize`` of every kustomization vs strict validation of the rendered objects;
- deploy: ``visionops.deploy.deploy`` against a stand-in Kubernetes API server on 127.0.0.1 (GET, PATCH, status
  polls; the rollout completes after N polls) vs the local target (atomic state-file write).

    .venv/bin/python benchmarks/bench_deploy.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_render(repeats: int) -> dict[str, float]:
    from tests.test_manifests import KUSTOMIZATIONS, render, validate

    render_s, validate_s, count = [], [], 0
    for _ in range(repeats):
        render.cache_clear()
        t0 = time.perf_counter()
        rendered = {name: render(name) for name in KUSTOMIZATIONS}
        t1 = time.perf_counter()
        count = 0
        for objs in rendered.values():
            for obj in objs:
                validate(obj)
                count += 1
        t2 = time.perf_counter()
        render_s.append(t1 - t0)
        validate_s.append(t2 - t1)
    return {
        "kustomizations": len(KUSTOMIZATIONS),
        "objects": count,
        "render_s": statistics.median(render_s),
        "validate_s": statistics.median(validate_s),
    }


def bench_deploy(calls: int, polls: int) -> dict[str, float]:
    from visionops.deploy import deploy

    from tests.test_deploy import FakeApiServer, make_deployment, rollout_status

    k8s, local = [], []
    requests = 0
    for i in range(calls):
        statuses = [rollout_status(3, 2, 1, 2, total=3)] * polls + [rollout_status(4, 2, 2, 2)]
        with FakeApiServer(make_deployment(), statuses) as api:
            t0 = time.perf_counter()
            deploy(
                f"s3://models/glasses/v{i + 7}",
                check_bundle=False,
                timeout_s=30,
                poll_s=0.001,
                client_configuration=api.configuration(),
            )
            k8s.append(time.perf_counter() - t0)
            requests = len(api.requests)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(calls):
            t0 = time.perf_counter()
            deploy(f"s3://models/glasses/v{i}", target="local", state_dir=tmp, check_bundle=False)
            local.append(time.perf_counter() - t0)
    return {
        "kubernetes_ms": 1000 * statistics.median(k8s),
        "requests_per_deploy": requests,
        "local_ms": 1000 * statistics.median(local),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Fewer repeats (a smoke run).")
    args = parser.parse_args()
    repeats, calls = (1, 5) if args.quick else (3, 20)

    r = bench_render(repeats)
    print(f"manifests: {r['kustomizations']} kustomizations, {r['objects']} objects (median of {repeats})")
    print(f"  kubectl kustomize (all)        {r['render_s'] * 1000:8.1f} ms")
    print(
        f"  strict validation (all)        {r['validate_s'] * 1000:8.1f} ms  ({r['objects'] / r['validate_s']:.0f} objects/s)"
    )
    print(f"  render / validate              {r['render_s'] / r['validate_s']:8.2f} x")

    d = bench_deploy(calls, polls=3)
    print(f"deploy (median of {calls} calls; stand-in API on 127.0.0.1, rollout completes after 3 polls)")
    print(
        f"  target=kubernetes              {d['kubernetes_ms']:8.2f} ms  ({d['requests_per_deploy']} HTTP requests)"
    )
    print(f"  target=local (atomic write)    {d['local_ms']:8.2f} ms")
    print(f"  kubernetes / local             {d['kubernetes_ms'] / d['local_ms']:8.1f} x")


if __name__ == "__main__":
    main()
