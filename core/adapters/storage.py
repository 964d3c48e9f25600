"""Proof-of-delivery photo storage: a local folder by default, any S3-compatible store
(AWS S3, Cloudflare R2, MinIO) when configured.

Environment (read here, validated once):

| variable | meaning | default |
|---|---|---|
| ``POD_STORAGE`` | ``local`` or ``s3`` | ``local`` |
| ``POD_LOCAL_DIR`` | folder for ``local`` | ``$DATA_DIR/pod`` |
| ``POD_S3_BUCKET`` | bucket name (required for ``s3``) | |
| ``POD_S3_ENDPOINT_URL`` | e.g. ``https://<account>.r2.cloudflarestorage.com`` | AWS |
| ``POD_S3_REGION`` | region (``auto`` for R2) | ``auto`` |
| ``POD_S3_ACCESS_KEY_ID`` / ``POD_S3_SECRET_ACCESS_KEY`` | credentials | boto3's chain |
| ``POD_S3_PREFIX`` | key prefix | ``pod/`` |
| ``POD_MAX_BYTES`` | largest photo accepted | ``5242880`` (5 MB) |

Objects are private; ``get`` reads them back for operators. Keys are content-addressed
(sha256) under the booking's reference and leg, so storing the same photo twice is harmless
and deleting one leg's photo never deletes another's. ``delete_photo`` deletes one (an
erasure, the retention job: core.services.retention); one already gone is no error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from core.config import get_settings, is_server_url
from core.domain.errors import Unavailable, ValidationError

log = logging.getLogger(__name__)

CONTENT_TYPES = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.\-]{0,250}")


class StorageConfigError(RuntimeError):
    """POD_* variables do not describe a usable store."""


class NotThisStore(Unavailable):
    """A photo's URI names a store not configured here (POD_STORAGE, POD_S3_BUCKET changed
    since): that one file cannot be deleted here, the store itself is not away."""


# The S3 client's time limits: a store that hangs must not hold a request, the daily
# retention run or an erasure's photo job for minutes (boto3's defaults: 60 s to connect,
# 60 s per read, retried up to 5 times). At worst one call takes about
# S3_ATTEMPTS * (S3_CONNECT_S + S3_READ_S) s, well within the minute the retention job's
# RQ timeout leaves after its run's time (core.services.retention.MAX_RUN_SECONDS).
S3_CONNECT_S = 5
S3_READ_S = 15  # between bytes of an answer: a 5 MB put's answer comes once it is sent
S3_ATTEMPTS = 2  # in all, the first included


def s3_config():  # -> botocore.config.Config (boto3 is only needed for POD_STORAGE=s3)
    from botocore.config import Config

    return Config(connect_timeout=S3_CONNECT_S, read_timeout=S3_READ_S,
                  retries={"total_max_attempts": S3_ATTEMPTS, "mode": "standard"})


@dataclass(frozen=True)
class StoredPhoto:
    uri: str
    key: str
    content_type: str
    size_bytes: int
    sha256: str


class PhotoStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...


def sniff_content_type(data: bytes) -> str | None:
    """The image type from its first bytes (never trust the declared type alone)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key:
        raise ValidationError("bad storage key", code="bad_storage_key")
    return key


class LocalStore:
    """Files under a folder; the URI is ``local://<key>``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self.root / _check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: a reader never sees half a photo
        return f"local://{key}"

    def get(self, key: str) -> bytes:
        return (self.root / _check_key(key)).read_bytes()

    def delete(self, key: str) -> None:
        (self.root / _check_key(key)).unlink(missing_ok=True)


class S3Store:
    """An S3-compatible bucket through boto3; the URI is ``s3://<bucket>/<key>``."""

    def __init__(self, bucket: str, client):
        self.bucket = bucket
        self.client = client

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.client.put_object(Bucket=self.bucket, Key=_check_key(key), Body=data,
                               ContentType=content_type)
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=_check_key(key))["Body"].read()

    def delete(self, key: str) -> None:
        # S3 answers 204 for a key that is not there: no error either.
        self.client.delete_object(Bucket=self.bucket, Key=_check_key(key))


@dataclass(frozen=True)
class StorageConfig:
    kind: str
    local_dir: Path
    bucket: str | None
    endpoint_url: str | None
    region: str
    access_key_id: str | None
    secret_access_key: str | None
    prefix: str
    max_bytes: int


def load_config(env: dict[str, str] | None = None, *,
                data_dir: Path | None = None) -> StorageConfig:
    """Parse POD_* variables; StorageConfigError names every problem. The local store
    defaults to ``pod`` under ``data_dir`` (the settings' DATA_DIR)."""
    env = dict(os.environ if env is None else env)
    kind = env.get("POD_STORAGE", "local").strip().lower() or "local"
    problems = []
    if kind not in ("local", "s3"):
        problems.append(f"POD_STORAGE must be 'local' or 's3', got {kind!r}")
    bucket = env.get("POD_S3_BUCKET") or None
    if kind == "s3" and not bucket:
        problems.append("POD_S3_BUCKET is required when POD_STORAGE=s3")
    key_id, secret = env.get("POD_S3_ACCESS_KEY_ID") or None, env.get(
        "POD_S3_SECRET_ACCESS_KEY") or None
    if bool(key_id) != bool(secret):
        problems.append("set both POD_S3_ACCESS_KEY_ID and POD_S3_SECRET_ACCESS_KEY, or neither")
    try:
        max_bytes = int(env.get("POD_MAX_BYTES") or 5 * 1024 * 1024)
        if max_bytes < 1024:
            raise ValueError
    except ValueError:
        problems.append("POD_MAX_BYTES must be an integer >= 1024")
        max_bytes = 5 * 1024 * 1024
    endpoint_url = env.get("POD_S3_ENDPOINT_URL") or None
    if kind == "s3" and endpoint_url is not None and not is_server_url(endpoint_url):
        # boto3 would refuse it (ValueError, "Invalid endpoint") at the first photo.
        problems.append("POD_S3_ENDPOINT_URL must be the store's http(s) URL "
                        "(https://<account>.r2.cloudflarestorage.com)")
    prefix = env.get("POD_S3_PREFIX", "pod/")
    if prefix and not _KEY.fullmatch(prefix.rstrip("/") or "x"):
        problems.append("POD_S3_PREFIX has characters a key cannot hold")
    if problems:
        raise StorageConfigError("; ".join(problems))
    local_dir = Path(env.get("POD_LOCAL_DIR")
                     or (get_settings().data_dir if data_dir is None else data_dir) / "pod")
    return StorageConfig(kind, local_dir, bucket, endpoint_url,
                         env.get("POD_S3_REGION") or "auto", key_id, secret, prefix, max_bytes)


def build_store(cfg: StorageConfig) -> PhotoStore:
    if cfg.kind == "s3":
        import boto3

        client = boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
                              aws_access_key_id=cfg.access_key_id,
                              aws_secret_access_key=cfg.secret_access_key,
                              config=s3_config())
        return S3Store(cfg.bucket or "", client)
    return LocalStore(cfg.local_dir)


@lru_cache(maxsize=1)
def _default() -> tuple[StorageConfig, PhotoStore]:
    cfg = load_config()
    return cfg, build_store(cfg)


def reset() -> None:
    """Forget the cached store (tests change the environment)."""
    _default.cache_clear()


def save_photo(data: bytes, *, folder: str, declared_type: str | None = None,
               store: PhotoStore | None = None, max_bytes: int | None = None) -> StoredPhoto:
    """Check and store one photo under ``folder``; ValidationError for anything not a photo."""
    cfg, default_store = _default()
    store = store or default_store
    limit = max_bytes or cfg.max_bytes
    if not data:
        raise ValidationError("the photo is empty", code="empty_photo")
    if len(data) > limit:
        raise ValidationError("the photo is too large", code="photo_too_large")
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ValidationError("only JPEG, PNG or WebP photos", code="not_a_photo")
    if declared_type and declared_type.split(";")[0].strip().lower() not in CONTENT_TYPES:
        raise ValidationError("only JPEG, PNG or WebP photos", code="not_a_photo")
    digest = hashlib.sha256(data).hexdigest()
    key = f"{cfg.prefix}{folder.strip('/')}/{digest[:32]}.{CONTENT_TYPES[content_type]}"
    try:
        uri = store.put(key, data, content_type)
    except _store_errors() as exc:
        # A disk full or an S3 endpoint out of reach is the store being away, not a bug:
        # the sender is asked to send it again (503, Retry-After), and the proof is kept.
        log.warning("photo store refused a photo", extra={"error": type(exc).__name__})
        raise Unavailable("the photo store cannot take photos now; send it again soon",
                          code="photo_store_unavailable") from exc
    return StoredPhoto(uri, key, content_type, len(data), digest)


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store's put raises when the store, not the photo, is the trouble."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # boto3 is only needed for POD_STORAGE=s3
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


def read_photo(uri: str, store: PhotoStore | None = None) -> bytes:
    """Bytes of a stored photo from its URI (for operators)."""
    store = store or _default()[1]
    if uri.startswith("local://"):
        return store.get(uri.removeprefix("local://"))
    if uri.startswith("s3://"):
        return store.get(uri.removeprefix("s3://").split("/", 1)[1])
    raise ValidationError("unknown photo URI", code="bad_storage_key")


def is_stored(uri: str | None) -> bool:
    """A URI one of our stores wrote (a leg may hold another link from before)."""
    return bool(uri) and str(uri).startswith(("local://", "s3://"))


def delete_photo(uri: str, store: PhotoStore | None = None) -> None:
    """Delete a stored photo by its URI; one already gone is no error. Unavailable when the
    store cannot now (a disk or an endpoint away), or NotThisStore (an Unavailable) when
    the URI is of a store not configured here (POD_STORAGE, POD_S3_BUCKET changed since):
    the caller keeps it to try again."""
    store = store or _default()[1]
    key = None
    if uri.startswith("local://") and isinstance(store, LocalStore):
        key = uri.removeprefix("local://")
    elif uri.startswith("s3://") and isinstance(store, S3Store):
        bucket, _, rest = uri.removeprefix("s3://").partition("/")
        key = rest if bucket == store.bucket else None
    if key is None:
        raise NotThisStore("the store this photo is in is not configured (POD_STORAGE)",
                           code="photo_store_unavailable")
    try:
        store.delete(key)
    except _store_errors() as exc:
        log.warning("photo store did not delete a photo", extra={"error": type(exc).__name__})
        raise Unavailable("the photo store cannot delete photos now",
                          code="photo_store_unavailable") from exc
