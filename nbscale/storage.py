"""Object storage: where bundles, results, pipeline artifacts and models live when work
runs on another machine.

A location is a URI: ``s3://bucket/prefix/...`` on any S3-compatible store (AWS S3,
or the MinIO that Kubeflow installs, reached through ``endpoint_url``), or a plain
path / ``file://`` URI. Uploads of inputs are content-addressed: the object's key
holds the sha256 of its bytes (``.../sha256/<hex>/<name>``), so an unchanged
bundle or model is found and not sent again; large objects go up in parts (boto3's
transfer manager) with one progress line. Downloads check size and sha256 before a
file is moved into place. Credentials come from boto3's standard chain
(environment, profile, IRSA web identity in a pod, the job's role in SageMaker);
nbscale never reads, stores or prints them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from .errors import BackendUnavailable, NbscaleError, SignatureError

MULTIPART_THRESHOLD = 8 << 20
_CAS = re.compile(r"/sha256/([0-9a-f]{64})/[^/]+$")


class StorageError(NbscaleError):
    """An object that cannot be read or written, or that does not match its hash."""


@dataclass(frozen=True)
class Location:
    scheme: str  # "s3" or "file"
    bucket: str
    key: str  # for "file": an absolute path

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else self.key

    def child(self, *parts: str) -> Location:
        key = "/".join([self.key.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(self.scheme, self.bucket, key)


def parse(uri: str) -> Location:
    """``s3://bucket/key``, ``file:///path`` or a path."""
    if not isinstance(uri, str) or not uri:
        raise StorageError(
            f"{uri!r} is not a storage location", "give s3://bucket/prefix or a path"
        )
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri!r} names no bucket", "write s3://BUCKET/prefix")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        return Location("file", "", os.path.abspath(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        raise StorageError(
            f"{uri!r}: nbscale stores objects in s3:// (any S3-compatible store) or a path",
            "for MinIO or another S3-compatible store use s3:// with endpoint_url",
        )
    return Location("file", "", os.path.abspath(os.path.expanduser(uri)))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_hash(uri: str) -> str | None:
    """The sha256 a content-addressed URI promises, or None."""
    m = _CAS.search(uri)
    return m.group(1) if m else None


class _Progress:
    """One line, rewritten in place on a terminal, printed every 10% elsewhere."""

    def __init__(self, what: str, total: int, out: TextIO | None):
        self.what, self.total, self.out = what, max(total, 1), out
        self.done = 0
        self.shown = -1
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def __call__(self, n: int) -> None:
        if self.out is None:
            return
        with self.lock:
            self.done += n
            pct = min(100, self.done * 100 // self.total)
            if pct // 10 == self.shown // 10 and pct != 100:
                return
            self.shown = pct
            rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
            end = "\n" if pct == 100 else ("\r" if self.out.isatty() else "\n")
            self.out.write(
                f"{self.what}: {pct}% of {self.total / 1e6:.1f} MB ({rate:.1f} MB/s){end}"
            )
            self.out.flush()


class ObjectStore:
    """Reads and writes objects under one base location."""

    def __init__(
        self,
        base: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        progress: TextIO | None = sys.stderr,
    ):
        self.base = parse(base)
        self.endpoint_url = endpoint_url
        self.region = region
        self.progress = progress
        self._client = None

    @classmethod
    def from_options(cls, options: dict[str, Any], **kw: Any) -> ObjectStore:
        """From a backend's config: ``storage``, ``endpoint_url``, ``region``."""
        base = options.get("storage")
        if not base:
            raise NbscaleError(
                "this backend has no object storage configured",
                'add storage = "s3://BUCKET/PREFIX" to its [backends.NAME] table',
            )
        return cls(base, options.get("endpoint_url"), options.get("region"), **kw)

    # -- the S3 client, made on first use ------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                from .errors import MissingDependency

                raise MissingDependency("boto3", "sagemaker") from None
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region or None,
                config=Config(retries={"mode": "standard", "max_attempts": 5}),
            )
        return self._client

    def _s3_errors(self, loc: Location, exc: Exception) -> NbscaleError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return BackendUnavailable(
                f"no AWS credentials to reach {loc.uri}",
                "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where a "
                "role gives them (a pod with IRSA, a SageMaker job)",
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",):
                return StorageError(f"bucket {loc.bucket!r} does not exist", "create it first")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return BackendUnavailable(
                    f"access to {loc.uri} was denied ({code})",
                    "check the credentials and the bucket policy",
                )
            if code in ("404", "NoSuchKey", "NotFound"):
                return StorageError(f"{loc.uri} does not exist")
            return StorageError(f"{loc.uri}: {code or exc}")
        return BackendUnavailable(
            f"cannot reach the object store for {loc.uri}: {exc}",
            "check endpoint_url and the network",
        )

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, use_threads=True)

    def _size(self, loc: Location) -> int | None:
        if loc.scheme == "file":
            try:
                return os.path.getsize(loc.key)
            except OSError:
                return None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=loc.bucket, Key=loc.key)["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._s3_errors(loc, exc) from None
        except BotoCoreError as exc:
            raise self._s3_errors(loc, exc) from None

    # -- writing -----------------------------------------------------------------------
    def put(self, path: str | Path, name: str | None = None, area: str = "blobs") -> str:
        """Upload ``path`` content-addressed; return its URI. Nothing is sent when an object
        with the same hash and size is already there."""
        return self.put_new(path, name, area)[0]

    def put_new(
        self, path: str | Path, name: str | None = None, area: str = "blobs"
    ) -> tuple[str, bool]:
        """``put``, also saying whether anything was sent (False: it was already there)."""
        path = Path(path)
        digest = sha256_file(path)
        size = path.stat().st_size
        loc = self.base.child(area, "sha256", digest, name or path.name)
        if self._size(loc) == size:
            return loc.uri, False
        self._upload(path, loc, size)
        return loc.uri, True

    def put_at(self, path: str | Path, uri: str) -> str:
        """Upload ``path`` to exactly ``uri`` (outputs whose place the submitter chose)."""
        path = Path(path)
        self._upload(path, parse(uri), path.stat().st_size)
        return uri

    def _upload(self, path: Path, loc: Location, size: int) -> None:
        if loc.scheme == "file":
            target = Path(loc.key)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
            try:
                shutil.copyfile(path, tmp)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        progress = (
            _Progress(f"uploading {path.name}", size, self.progress)
            if size >= MULTIPART_THRESHOLD
            else None
        )
        try:
            self.client.upload_file(
                str(path), loc.bucket, loc.key, Config=self._transfer_config(), Callback=progress
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._s3_errors(loc, exc) from None
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, BotoCoreError | ClientError):
                raise self._s3_errors(loc, cause) from None
            raise

    # -- reading -----------------------------------------------------------------------
    def get(
        self, uri: str, dest: str | Path, sha256: str | None = None, size: int | None = None
    ) -> Path:
        return fetch(uri, dest, sha256=sha256, size=size, store=self)

    def exists(self, uri: str) -> bool:
        return self._size(parse(uri)) is not None

    def delete(self, uri: str) -> None:
        loc = parse(uri)
        if loc.scheme == "file":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(loc.key)
            return
        self.client.delete_object(Bucket=loc.bucket, Key=loc.key)


def fetch(
    uri: str,
    dest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    store: ObjectStore | None = None,
) -> Path:
    """Download (or copy) ``uri`` to ``dest``, checking size and hash before it lands there.

    The hash checked is ``sha256`` if given, else the one a content-addressed URI names.
    """
    loc = parse(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = sha256 or expected_hash(uri)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        if loc.scheme == "file":
            try:
                shutil.copyfile(loc.key, tmp)
            except FileNotFoundError:
                raise StorageError(f"{uri} does not exist") from None
        else:
            store = store or ObjectStore(f"s3://{loc.bucket}/", progress=None)
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                store.client.download_file(
                    loc.bucket, loc.key, str(tmp), Config=store._transfer_config()
                )
            except (BotoCoreError, ClientError) as exc:
                raise store._s3_errors(loc, exc) from None
        got_size = tmp.stat().st_size
        if size is not None and got_size != size:
            raise SignatureError(
                f"{uri} has {got_size} bytes, {size} were expected; refusing it",
                "it was changed or cut short in the store",
            )
        if want and sha256_file(tmp) != want:
            raise SignatureError(
                f"{uri} does not match its sha256; refusing it (changed in the store)",
                "upload it again",
            )
        os.chmod(tmp, 0o600)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def store_for(uri: str, options: dict[str, Any] | None = None) -> ObjectStore:
    """A store that can read ``uri``, with the backend's endpoint and region if given."""
    options = options or {}
    loc = parse(uri)
    base = f"s3://{loc.bucket}/" if loc.scheme == "s3" else "/"
    return ObjectStore(base, options.get("endpoint_url"), options.get("region"), progress=None)
