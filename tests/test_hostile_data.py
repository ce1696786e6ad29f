"""Hostile input and faults on the data side (issue 17): pixel bombs, oversized and special files, paths that
leave the source, a stalled or write-dropping S3 endpoint (a real moto server behind a real TCP proxy),
versions whose marker lies, stored XSS and spreadsheet formulas.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from visionops import bundle as bundle_mod
from visionops import storage
from visionops.data import synth
from visionops.data.ingest import Confinement, ingest
from visionops.data.manifest import load_dataset, write_dataset
from visionops.data.validate import validate
from visionops.errors import BundleError, DataError, ImageError, StorageError, StorageUnreachable
from visionops.images import DRAFT_MARGIN, ImageLimits, PixelBudget, decode_image

from tests.conftest import ROOT, free_port

BOMB_SIDE = 6000
#: Decoded bytes one drafted 6000x6000 bomb may cost: 750x750 RGB is 1.7 MB.
BATCH_RSS_BUDGET_MB = 300


# -- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A real JPEG whose header says 6000x6000 (36 megapixels) in a few hundred KB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.jpg"
    img = Image.new("RGB", (BOMB_SIDE, BOMB_SIDE), (120, 130, 140))
    img.save(path, "JPEG", quality=5)
    del img
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """40 synthetic images with labels.csv (groups + metadata)."""
    root = tmp_path_factory.mktemp("hostile") / "faces"
    synth.generate(str(root), count=40, size=32, seed=0)
    return root


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _rows(faces: Path) -> list[dict]:
    with open(faces / "labels.csv", newline="") as fh:
        return [{"path": r["path"], "label": r["label"]} for r in csv.DictReader(fh)]


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of the moto server that misbehaves on S3 writes (PUT requests).

    ``drop_key``: a PUT whose request line names this key closes the connection (the write is lost);
    ``stall_after``: every PUT after that many is held forever (no byte forwarded, no answer). Other requests
    (GET, HEAD, the multi-object delete POST) pass, so clean-up can be observed.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.drop_key: bytes | None = None
        self.stall_after: int | None = None
        self.puts = 0
        self.stalled = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _verdict(self, chunk: bytes) -> str:
        if not chunk.startswith(b"PUT "):
            return "forward"
        with self._lock:
            self.puts += 1
            if self.drop_key and self.drop_key in chunk.split(b"\r\n", 1)[0]:
                return "drop"
            if self.stall_after is not None and self.puts > self.stall_after:
                self.stalled += 1
                return "stall"
        return "forward"

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        stalled = False
        try:
            while chunk := src.recv(65536):
                verdict = self._verdict(chunk) if from_client and not stalled else "forward"
                if verdict == "drop":
                    src.close()
                    dst.close()
                    return
                if verdict == "stall" or stalled:
                    stalled = True  # swallow everything: the client waits for an answer that never comes
                    continue
                dst.sendall(chunk)
        except OSError:
            pass

    def close(self) -> None:
        self._server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def proxy(s3):
    p = FaultProxy(s3.port)
    yield p
    p.close()


def _objects(s3, prefix: str) -> list[str]:
    bucket = s3.bucket.removeprefix("s3://")
    return [o.object_name for o in s3.client().list_objects(bucket, prefix=prefix, recursive=True)]


# -- 1. bounded by bytes and pixels ---------------------------------------------------------------------------
def test_pixel_bomb_is_refused_from_its_header_before_any_pixel_is_decoded(bomb):
    data = bomb.read_bytes()
    limits = ImageLimits(max_pixels=20_000_000)
    started = time.perf_counter()
    with pytest.raises(ImageError, match=r"6000x6000 = 36000000 pixels > limit 20000000 \(refused before"):
        decode_image(data, limits)
    assert time.perf_counter() - started < 0.5  # a full decode of 36 megapixels takes seconds


def test_jpeg_draft_decodes_only_what_the_model_needs(bomb):
    img = decode_image(bomb.read_bytes(), target_side=256)
    assert img.info["source_size"] == (BOMB_SIDE, BOMB_SIDE)
    assert img.size == (750, 750)  # 1/8 by the DCT; still >= DRAFT_MARGIN x the needed side
    assert min(img.size) >= 256 * DRAFT_MARGIN
    small = Image.new("RGB", (250, 250), (10, 20, 30))
    buf = io.BytesIO()
    small.save(buf, "JPEG")
    # an ordinary photo is decoded at full size, exactly as training decodes it
    assert decode_image(buf.getvalue(), target_side=96).size == (250, 250)


def test_request_pixel_budget_refuses_the_image_that_would_exceed_it(bomb):
    data = bomb.read_bytes()
    budget = PixelBudget(5 * 750 * 750)
    for _ in range(5):
        decode_image(data, target_side=256, budget=budget)
    with pytest.raises(ImageError, match=r"request has too many pixels: .* > limit 2812500"):
        decode_image(data, target_side=256, budget=budget)
    assert budget.used == 5 * 750 * 750  # the refused image took nothing
    # without draft (a PNG, or no target) one 36-megapixel image alone breaks a 50 M budget's share fast
    with pytest.raises(ImageError, match="request has too many pixels"):
        decode_image(data, budget=PixelBudget(10_000_000))


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    import psutil
    from visionops.images import decode_image
    data = open(sys.argv[1], "rb").read()
    count, target = int(sys.argv[2]), (int(sys.argv[3]) or None)
    decode_image(open(sys.argv[4], "rb").read())  # imports and first-call costs of PIL
    me, peak, done = psutil.Process(), [0], threading.Event()
    def sample():  # ru_maxrss would count the parent's pages from before the exec
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.002)
    before = me.memory_info().rss
    sampler = threading.Thread(target=sample)
    sampler.start()
    images = [decode_image(data, target_side=target) for _ in range(count)]  # a batch keeps every image
    after = me.memory_info().rss
    done.set()
    sampler.join()
    print(json.dumps({"growth_mb": (after - before) / 2**20, "peak_mb": max(peak[0], after) / 2**20,
                      "before_mb": before / 2**20, "size": images[0].size}))
    """
)


def _decode_rss(bomb: Path, small: Path, count: int, target: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "components")}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(bomb), str(count), str(target), str(small)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_batch_of_64_pixel_bombs_stays_within_the_rss_budget(bomb, tmp_path):
    small = tmp_path / "small.jpg"
    Image.new("RGB", (64, 64)).save(small, "JPEG")
    drafted = _decode_rss(bomb, small, 64, 256)
    one_full = _decode_rss(bomb, small, 1, 0)
    print(
        f"64 drafted 6000x6000 bombs: RSS +{drafted['growth_mb']:.0f} MB (process peak {drafted['peak_mb']:.0f} MB, "
        f"budget {BATCH_RSS_BUDGET_MB} MB); ONE bomb decoded in full: +{one_full['growth_mb']:.0f} MB"
    )
    assert tuple(drafted["size"]) == (750, 750)
    assert drafted["growth_mb"] < BATCH_RSS_BUDGET_MB
    assert drafted["peak_mb"] - drafted["before_mb"] < BATCH_RSS_BUDGET_MB
    # the measurement can fail: a single undrafted bomb alone costs about 100 MB (36 M pixels x 3 bytes)
    assert one_full["growth_mb"] > 90


def test_ingest_reads_nothing_over_the_limit_and_only_regular_files(faces, tmp_path):
    import psutil

    src = tmp_path / "src"
    shutil.copytree(faces, src)
    sparse = src / "glasses" / "huge.jpg"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 30)  # 1 GB that costs no disk
    os.mkfifo(src / "no_glasses" / "pipe.jpg")
    rows = [
        *_rows(src),
        {"path": "glasses/huge.jpg", "label": "glasses"},
        {"path": "no_glasses/pipe.jpg", "label": "no_glasses"},
    ]
    _write_csv(src / "labels.csv", rows)
    rss = psutil.Process().memory_info().rss
    ds = ingest(str(src), str(tmp_path / "ds"), progress=False, workers=2)
    grew = (psutil.Process().memory_info().rss - rss) / 2**20
    reasons = {Path(r["path"]).name: r["reason"] for r in _read(tmp_path / "ds" / "quarantine.csv")}
    assert f"too large: {1 << 30} bytes > limit" in reasons["huge.jpg"]
    assert "not a regular file" in reasons["pipe.jpg"]
    assert len(ds.frame) == 40
    print(f"ingest with a 1 GB sparse file and a FIFO: RSS grew {grew:.0f} MB")
    assert grew < 200


def test_a_labels_csv_that_is_dev_zero_is_a_clear_error(faces, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(faces, src)
    (src / "labels.csv").unlink()
    (src / "labels.csv").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="cannot read labels CSV.*not a regular file"):
        ingest(str(src), str(tmp_path / "ds"), progress=False)


def test_dev_zero_named_in_a_labels_csv_is_refused_then_quarantined_when_allowed(faces, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(faces, src)
    _write_csv(src / "labels.csv", [*_rows(src), {"path": "/dev/zero", "label": "glasses"}])
    with pytest.raises(DataError, match=r"/dev/zero \(outside the source root\)"):
        ingest(str(src), str(tmp_path / "ds"), progress=False)
    ingest(str(src), str(tmp_path / "ds"), progress=False, confinement=Confinement(True))
    reasons = {r["path"]: r["reason"] for r in _read(tmp_path / "ds" / "quarantine.csv")}
    assert "not a regular file" in reasons["/dev/zero"]


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- 3. confined ingestion ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hostile",
    ["../../../../etc/passwd", "/etc/shadow", "glasses/../../outside.jpg", "s3://other-bucket/x.jpg"],
)
def test_labels_csv_paths_outside_the_source_are_refused_and_named(faces, tmp_path, hostile):
    src = tmp_path / "src"
    shutil.copytree(faces, src)
    (tmp_path / "outside.jpg").write_bytes((faces / "labels.csv").read_bytes())
    _write_csv(src / "labels.csv", [*_rows(src), {"path": hostile, "label": "glasses"}])
    with pytest.raises(DataError, match="1 path\\(s\\) in source .* point outside it") as info:
        ingest(str(src), str(tmp_path / "ds"), progress=False)
    assert hostile.split("/")[-1] in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_a_symlink_in_an_imagefolder_pointing_outside_is_refused(faces, tmp_path):
    src = tmp_path / "folder"
    for cls in synth.CLASSES:
        shutil.copytree(faces / cls, src / cls)
    secret = tmp_path / "private" / "secret.png"
    secret.parent.mkdir()
    shutil.copyfile(next((faces / "glasses").iterdir()), secret)
    (src / "glasses" / "link.png").symlink_to(secret)
    with pytest.raises(DataError, match=r"link\.png \(it resolves to .*private/secret\.png\)"):
        ingest(str(src), str(tmp_path / "ds"), progress=False)
    # a symlink that stays inside the source is fine
    (src / "glasses" / "link.png").unlink()
    inside = next((src / "no_glasses").iterdir())
    (src / "glasses" / "inside.png").symlink_to(inside)
    ingest(str(src), str(tmp_path / "ds"), progress=False)


def test_s3_labels_csv_is_confined_to_its_bucket_unless_listed(faces, s3, tmp_path):
    bucket = s3.bucket.removeprefix("s3://")
    other = s3.make_bucket(f"{bucket}-other")
    client = s3.client()
    rows = _rows(faces)
    for row in rows:
        client.fput_object(bucket, f"raw/{row['path']}", str(faces / row["path"]))
    extra = tmp_path / "x.png"
    Image.effect_noise((32, 32), 40).convert("RGB").save(extra)
    client.fput_object(other.removeprefix("s3://"), "x.png", str(extra))
    hostile = [*rows, {"path": f"{other}/x.png", "label": "glasses"}]
    storage.write_bytes(f"{s3.bucket}/raw/labels.csv", _csv_bytes(hostile))
    with pytest.raises(DataError, match=f"{other}/x.png \\(another bucket"):
        ingest(f"{s3.bucket}/raw", str(tmp_path / "ds"), progress=False)
    dotdot = [*rows, {"path": f"{s3.bucket}/raw/../secrets/key.png", "label": "glasses"}]
    storage.write_bytes(f"{s3.bucket}/raw/labels.csv", _csv_bytes(dotdot))
    with pytest.raises(DataError, match="a '..' segment"):
        ingest(f"{s3.bucket}/raw", str(tmp_path / "ds"), progress=False)
    storage.write_bytes(f"{s3.bucket}/raw/labels.csv", _csv_bytes(hostile))
    allowed = Confinement(allowed_buckets=(other.removeprefix("s3://"),))
    ds = ingest(f"{s3.bucket}/raw", str(tmp_path / "ds"), progress=False, confinement=allowed)
    assert f"{other}/x.png" in set(ds.frame["source"])


def _csv_bytes(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def test_stalled_endpoint_fails_within_the_deadline_and_leaves_no_orphans(faces, s3, proxy, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("S3_TIMEOUT_S", "1")
    monkeypatch.setenv("S3_DEADLINE_S", "3")
    proxy.stall_after = 8  # 8 images reach the store, then every write hangs
    output = f"{s3.bucket}/datasets/v1"
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable or stalled") as info:
        ingest(str(faces), output, progress=False, workers=4)
    took = time.monotonic() - started
    print(
        f"stalled endpoint: failed after {took:.1f}s (timeout 1s, deadline 3s), {proxy.stalled} writes stalled"
    )
    assert took < 30
    assert "nothing was published" in str(info.value)
    assert proxy.puts > 8 and proxy.stalled >= 1
    assert _objects(s3, "datasets/") == []  # the 8 images it wrote were removed


def test_unreachable_source_stops_the_whole_ingest_at_the_first_failure(faces, s3, tmp_path, monkeypatch):
    bucket = s3.bucket.removeprefix("s3://")
    rows = _rows(faces)
    for row in rows:
        s3.client().fput_object(bucket, f"raw/{row['path']}", str(faces / row["path"]))
    storage.write_bytes(f"{s3.bucket}/raw/labels.csv", _csv_bytes(rows))
    dead = free_port()  # nothing listens: every read fails at once
    from visionops.data import ingest as ingest_mod

    found = ingest_mod._find_items(f"{s3.bucket}/raw", None)
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("S3_DEADLINE_S", "1")
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match=r"ingest stopped after \d+ of 40 images"):
        ingest_mod._run_parallel(found.items, tmp_path, ImageLimits(), workers=2, progress=False)
    assert time.monotonic() - started < 15


# -- 2. versions that cannot lie --------------------------------------------------------------------------------
def _tiny_bundle(uri: str, seed: int) -> str:
    import torch
    from visionops.models import create_model, get_entry

    torch.manual_seed(seed)
    model = create_model("tiny_cnn", 2)
    meta = {
        "architecture": "tiny_cnn",
        "classes": ["glasses", "no_glasses"],
        "preprocess": get_entry("tiny_cnn").preprocess,
        "threshold": 0.3 + seed / 10,
    }
    return bundle_mod.save_bundle(model, meta, uri)


def test_interrupted_bundle_overwrite_on_s3_is_refused_on_load(s3, proxy, monkeypatch, tmp_path):
    uri = f"{s3.bucket}/models/glasses"
    _tiny_bundle(uri, seed=1)
    v1 = bundle_mod.read_meta(uri)["model_version"]
    monkeypatch.setenv("S3_ENDPOINT_URL", proxy.endpoint)
    proxy.drop_key = b"/models/glasses/bundle.json"  # the weights arrive, the marker never does
    with pytest.raises(StorageError, match="has no bundle.json and reads as incomplete"):
        _tiny_bundle(uri, seed=2)
    monkeypatch.setenv("S3_ENDPOINT_URL", s3.endpoint)
    assert "models/glasses/model.safetensors" in _objects(s3, "models/")
    with pytest.raises(StorageError, match="missing or incomplete: bundle.json not found"):
        bundle_mod.load_bundle(uri, cache_dir=tmp_path / "cache")
    # a writer that overwrote the weights but left the old marker (the pre-issue-17 order) is caught too
    _tiny_bundle(uri, seed=1)
    other = f"{s3.bucket}/models/other"
    _tiny_bundle(other, seed=2)
    storage.write_bytes(f"{uri}/model.safetensors", storage.read_bytes(f"{other}/model.safetensors"))
    with pytest.raises(BundleError, match=f"\\(model {v1}\\) records .* the weights were replaced"):
        bundle_mod.load_bundle(uri, cache_dir=tmp_path / "cache2")


def test_bundle_marker_naming_other_weights_is_refused_even_without_a_recorded_hash(tmp_path):
    a = _tiny_bundle(str(tmp_path / "a"), seed=1)
    b = _tiny_bundle(str(tmp_path / "b"), seed=2)
    shutil.copyfile(Path(b) / "model.safetensors", Path(a) / "model.safetensors")
    meta = json.loads((Path(a) / "bundle.json").read_text())
    del meta["weights_sha256"]  # a bundle written before the hash was recorded
    (Path(a) / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="belong to different versions"):
        bundle_mod.load_bundle(a)
    assert bundle_mod.load_bundle(b).threshold == pytest.approx(0.5)


def _small_dataset(faces: Path, uri: str, labels: dict[str, str] | None = None, meta_cell: str = ""):
    import pandas as pd

    rows = []
    for i, row in enumerate(_rows(faces)):
        path = faces / row["path"]
        rows.append(
            {
                "path": str(path),
                "label": (labels or {}).get(row["label"], row["label"]),
                "sha256": f"{i:064x}",
                "width": 32,
                "height": 32,
                "split": ("train", "val", "test")[i % 3],
                "group": "",
                "site": meta_cell or "plant-a",
            }
        )
    return write_dataset(pd.DataFrame(rows), {"source": "test"}, uri)


def test_interrupted_dataset_overwrite_is_refused_on_load(faces, s3, proxy, monkeypatch):
    uri = f"{s3.bucket}/datasets/glasses"
    first = _small_dataset(faces, uri)
    monkeypatch.setenv("S3_ENDPOINT_URL", proxy.endpoint)
    proxy.drop_key = b"/datasets/glasses/dataset.json"
    with pytest.raises(StorageError, match="has no dataset.json"):
        _small_dataset(faces, uri, labels={"glasses": "no_glasses", "no_glasses": "glasses"})
    monkeypatch.setenv("S3_ENDPOINT_URL", s3.endpoint)
    with pytest.raises(StorageError, match="dataset at .* is missing or incomplete"):
        load_dataset(uri)
    # the old marker beside a new manifest (a writer that did not remove the marker first)
    _small_dataset(faces, uri)
    storage.write_bytes(f"{uri}/dataset.json", json.dumps(first.meta | {"manifest_sha256": None}).encode())
    swapped = storage.read_text(f"{uri}/manifest.csv").replace(",glasses,", ",tmp,")
    swapped = swapped.replace(",no_glasses,", ",glasses,").replace(",tmp,", ",no_glasses,")
    storage.write_text(f"{uri}/manifest.csv", swapped)
    with pytest.raises(DataError, match=f"names version {first.version} but manifest.csv holds ds-"):
        load_dataset(uri)
    _small_dataset(faces, uri)
    storage.write_text(f"{uri}/manifest.csv", swapped)
    with pytest.raises(DataError, match="the manifest was replaced after the marker"):
        load_dataset(uri)


# -- 4. escaped reports and exports --------------------------------------------------------------------------
XSS = "<script>alert(1)</script>"


def test_hostile_label_is_refused_at_ingest_with_the_pattern(faces, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(faces, src)
    rows = _rows(src)
    rows[0]["label"] = XSS
    _write_csv(src / "labels.csv", rows)
    with pytest.raises(DataError, match=r"label '<script>alert\(1\)</script>' .* must match"):
        ingest(str(src), str(tmp_path / "ds"), progress=False)
    rows[0]["label"] = "=cmd|' /C calc'!A0"
    _write_csv(src / "labels.csv", rows)
    with pytest.raises(DataError, match="is not a valid class name"):
        ingest(str(src), str(tmp_path / "ds"), progress=False)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_xss_label_is_escaped_in_validation_html(faces, tmp_path):
    # a dataset from before label checking (or written by another tool) still renders safely
    ds = _small_dataset(faces, str(tmp_path / "ds"), labels={"glasses": XSS})
    validate(ds.uri, str(tmp_path / "report"))
    page = (tmp_path / "report" / "validation.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags
    assert XSS not in page
    assert any(XSS in t for t in parser.text)  # shown to the reader, as text


def test_formula_cells_are_neutralised_in_the_manifest_and_restored_on_load(faces, tmp_path):
    formula = "=cmd|' /C calc'!A0"
    ds = _small_dataset(faces, str(tmp_path / "ds"), meta_cell=formula)
    raw = _read(tmp_path / "ds" / "manifest.csv")
    assert {r["site"] for r in raw} == {"'" + formula}
    assert set(load_dataset(ds.uri).frame["site"]) == {formula}


def test_labeling_select_sources_are_confined_too(faces, tmp_path):
    from visionops.labeling.select import discover

    src = tmp_path / "captures"
    shutil.copytree(faces / "glasses", src)
    listing = src / "list.csv"
    _write_csv(listing, [{"path": "../../../../etc/passwd"}, {"path": next(src.glob("*.png")).name}])
    with pytest.raises(DataError, match=r"etc/passwd \(outside the source root\)"):
        discover(str(listing))
    (src / "link.png").symlink_to(next((faces / "no_glasses").glob("*.png")))
    listing.unlink()
    with pytest.raises(DataError, match=r"link\.png \(it resolves to"):
        discover(str(src))
    assert len(discover(str(src), confinement=Confinement(allow_outside_source=True))) > 1
