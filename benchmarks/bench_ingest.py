"""Ingestion throughput: the same images from a loopback S3 server (moto) vs from a local folder, one run.

    .venv/bin/python benchmarks/bench_ingest.py [--quick] [--workers 8]

Uses ../shared/data/faces-glasses (2,000 real photos) when present, else synthetic faces. Both runs write to a
local output, so only the source differs: images/s for each and their ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("VISIONOPS_FACES_DIR", ROOT.parent / "shared" / "data" / "faces-glasses"))


def start_moto() -> tuple[subprocess.Popen, int]:
    """A moto S3 server on 127.0.0.1 (like tests/conftest.py), with the env pointing the minio client at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.terminate()
        raise RuntimeError("moto server did not start")
    os.environ.update(
        {
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
    )
    return proc, port


def prepare_source(tmp: Path, limit: int | None) -> tuple[Path, str]:
    """A local ImageFolder with the benchmark images; returns (folder, description)."""
    src = tmp / "src"
    if (FACES / "glasses").is_dir():
        for cls in ("glasses", "no_glasses"):
            files = sorted((FACES / cls).glob("*.jpg"))[: limit // 2 if limit else None]
            (src / cls).mkdir(parents=True)
            for f in files:
                shutil.copyfile(f, src / cls / f.name)
        return src, f"real photos from {FACES}"
    from visionops.data import synth

    synth.generate(str(src), count=limit or 2000, size=128, seed=0)
    (src / "labels.csv").unlink()  # a bare ImageFolder, like the photos
    return src, "synthetic faces (128 px PNG; real photos not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images instead of all")
    parser.add_argument("--workers", type=int, default=8, help="ingest workers (threads)")
    args = parser.parse_args()

    from visionops import storage
    from visionops.data.ingest import ingest

    proc, _ = start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp_name:
            tmp = Path(tmp_name)
            src, what = prepare_source(tmp, 300 if args.quick else None)
            files = sorted(p for p in src.rglob("*") if p.is_file())
            total_mb = sum(p.stat().st_size for p in files) / 1e6
            storage.store_for("s3://bench").client.make_bucket("bench")
            with ThreadPoolExecutor(16) as pool:  # upload (not timed)
                list(
                    pool.map(
                        lambda p: storage.write_bytes(
                            f"s3://bench/raw/{p.relative_to(src).as_posix()}", p.read_bytes()
                        ),
                        files,
                    )
                )
            for p in files:  # warm the page cache so the local run does not pay for the first disk read
                p.read_bytes()
            # warm-up (not timed): imports and first-use costs must not land on whichever run goes first
            warm = tmp / "warm"
            for cls in ("glasses", "no_glasses"):
                (warm / cls).mkdir(parents=True)
                for f in sorted((src / cls).iterdir())[:5]:
                    shutil.copyfile(f, warm / cls / f.name)
            ingest(str(warm), str(tmp / "warm-out"), workers=args.workers, progress=False)
            results = {}
            for name, source in (("local folder", str(src)), ("loopback S3 (moto)", "s3://bench/raw")):
                start = time.perf_counter()
                ds = ingest(source, str(tmp / f"out-{len(results)}"), workers=args.workers, progress=False)
                seconds = time.perf_counter() - start
                results[name] = (len(ds.frame), seconds)
            print(
                f"ingest benchmark: {len(files)} images ({total_mb:.1f} MB), {what}; workers={args.workers}; "
                f"output: a local folder; {os.cpu_count()} CPUs"
            )
            for name, (n, seconds) in results.items():
                print(f"  {name:20s} {n:5d} images in {seconds:6.2f} s = {n / seconds:7.1f} images/s")
            local_rate = results["local folder"][0] / results["local folder"][1]
            s3_rate = results["loopback S3 (moto)"][0] / results["loopback S3 (moto)"][1]
            print(f"  ratio local / S3: {local_rate / s3_rate:.2f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
