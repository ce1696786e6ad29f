"""Storage by URI against a real S3-compatible server (moto) through the minio client, and local paths."""

from __future__ import annotations

import pytest
from visionops import storage
from visionops.errors import StorageError

pytestmark = pytest.mark.integration


def test_s3_round_trip_list_exists(s3):
    base = s3.bucket + "/data"
    for i in range(25):
        storage.write_bytes(f"{base}/d{i % 3}/f{i}.bin", bytes([i]) * 10)
    listed = list(storage.list_uris(base))
    assert len(listed) == 25
    assert storage.read_bytes(f"{base}/d1/f4.bin") == bytes([4]) * 10
    assert storage.exists(f"{base}/d0/f0.bin")
    assert not storage.exists(f"{base}/nope.bin")


def test_s3_listing_paginates(s3):
    # moto pages at 1,000 keys: 1,050 objects need two pages
    client = s3.client()
    import io

    bucket = s3.bucket.removeprefix("s3://")
    for i in range(1050):
        client.put_object(bucket, f"many/{i:05d}", io.BytesIO(b"x"), 1)
    assert sum(1 for _ in storage.list_uris(f"{s3.bucket}/many")) == 1050


def test_missing_bucket_is_explained(s3):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        list(storage.list_uris("s3://no-such-bucket/x"))


def test_missing_object_is_explained(s3):
    with pytest.raises(StorageError, match="no such object"):
        storage.read_bytes(f"{s3.bucket}/missing.bin")


def test_empty_prefix_lists_nothing(s3):
    assert list(storage.list_uris(f"{s3.bucket}/empty")) == []


def test_unreachable_endpoint_is_explained(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(storage, "_RETRIES", 1)
    with pytest.raises(StorageError, match="unreachable"):
        storage.read_bytes("s3://bucket/key")


def test_wrong_credentials_are_explained(monkeypatch):
    """moto checks SigV4 after INITIAL_NO_AUTH_ACTION_COUNT requests: create a real IAM key first."""
    import boto3

    from tests.conftest import start_moto

    server = start_moto({"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        kw = dict(
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="alice")
        iam.put_user_policy(
            UserName="alice",
            PolicyName="all",
            PolicyDocument=(
                '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'
            ),
        )
        key = iam.create_access_key(UserName="alice")["AccessKey"]
        monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        with pytest.raises(StorageError, match="rejected the credentials"):
            storage.read_bytes("s3://bucket/key")
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)


def test_publish_dir_writes_marker_last_and_local_is_atomic(tmp_path, s3):
    src = tmp_path / "art"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a")
    (src / "done.json").write_text("{}")
    uri = storage.publish_dir(src, f"{s3.bucket}/art", "done.json")
    assert storage.require_marker(uri, "done.json", "artifact")
    assert storage.read_text(f"{uri}/sub/a.txt") == "a"
    local = storage.publish_dir(src, str(tmp_path / "out" / "art"), "done.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["art"]  # no partial leftovers
    with storage.local_dir_for(uri, "done.json") as d:
        assert (d / "sub" / "a.txt").read_text() == "a"
    assert (tmp_path / "out" / "art" / "done.json").exists() and local


def test_incomplete_artifact_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(StorageError, match="missing or incomplete"):
        storage.require_marker(str(tmp_path / "half"), "bundle.json", "model bundle")
