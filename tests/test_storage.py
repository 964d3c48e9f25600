"""Proof-of-delivery photo storage: local folder by default, S3-compatible when configured."""

from __future__ import annotations

import io

import boto3
import pytest
from botocore.stub import Stubber

from core.adapters import storage
from core.domain.errors import ValidationError

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200


def test_local_store_round_trip(tmp_path):
    store = storage.LocalStore(tmp_path)
    saved = storage.save_photo(JPEG, folder="12345678/leg-1", store=store)
    assert saved.uri.startswith("local://pod/12345678/leg-1/") and saved.uri.endswith(".jpg")
    assert saved.content_type == "image/jpeg" and saved.size_bytes == len(JPEG)
    assert storage.read_photo(saved.uri, store=store) == JPEG
    again = storage.save_photo(JPEG, folder="12345678/leg-1", store=store)
    assert again.uri == saved.uri  # content-addressed


@pytest.mark.parametrize(("data", "declared", "code"), [
    (b"", None, "empty_photo"),
    (b"%PDF-1.4 not a photo", None, "not_a_photo"),
    (JPEG, "application/pdf", "not_a_photo"),
    (JPEG + b"\x00" * 5000, None, "photo_too_large"),
])
def test_bad_photos_are_refused(tmp_path, data, declared, code):
    with pytest.raises(ValidationError) as err:
        storage.save_photo(data, folder="x", declared_type=declared,
                           store=storage.LocalStore(tmp_path), max_bytes=4096)
    assert err.value.code == code


def test_keys_cannot_escape_the_folder(tmp_path):
    with pytest.raises(ValidationError):
        storage.LocalStore(tmp_path).put("../etc/passwd", JPEG, "image/jpeg")


def test_s3_store_puts_and_gets_through_boto3():
    client = boto3.client("s3", region_name="auto", endpoint_url="https://r2.example.com",
                          aws_access_key_id="k", aws_secret_access_key="s")
    store = storage.S3Store("pods", client)
    with Stubber(client) as stub:
        stub.add_response("put_object", {}, {"Bucket": "pods", "Key": "pod/r/leg-2/a.png",
                                             "Body": PNG, "ContentType": "image/png"})
        stub.add_response("get_object", {"Body": io.BytesIO(PNG)},
                          {"Bucket": "pods", "Key": "pod/r/leg-2/a.png"})
        assert store.put("pod/r/leg-2/a.png", PNG, "image/png") == "s3://pods/pod/r/leg-2/a.png"
        assert storage.read_photo("s3://pods/pod/r/leg-2/a.png", store=store) == PNG
        stub.assert_no_pending_responses()


def test_config_from_environment(tmp_path):
    local = storage.load_config({"POD_LOCAL_DIR": str(tmp_path)})
    assert local.kind == "local" and local.local_dir == tmp_path
    s3 = storage.load_config({"POD_STORAGE": "s3", "POD_S3_BUCKET": "pods",
                              "POD_S3_ENDPOINT_URL": "https://x.r2.cloudflarestorage.com",
                              "POD_S3_ACCESS_KEY_ID": "k", "POD_S3_SECRET_ACCESS_KEY": "s"})
    assert isinstance(storage.build_store(s3), storage.S3Store)
    for bad in ({"POD_STORAGE": "ftp"}, {"POD_STORAGE": "s3"},
                {"POD_STORAGE": "s3", "POD_S3_BUCKET": "b", "POD_S3_ACCESS_KEY_ID": "k"},
                {"POD_MAX_BYTES": "lots"}):
        with pytest.raises(storage.StorageConfigError):
            storage.load_config(bad)
