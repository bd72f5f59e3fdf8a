"""A bucket and prefix in object storage (S3 and S3-compatible servers), through obstore.

Only the operations the store's rules need: get with ETag, create-only put (If-None-Match: *),
compare-and-swap put (If-Match), unconditional put of large files (multipart), list, delete.
Credentials and endpoint come from the standard AWS environment variables and are never written.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnreg.errors import StoreError, first_line

if TYPE_CHECKING:
    from obstore import PutMode

SCHEME = "s3://"
PART = 8 * 1024 * 1024
HTTP_FLAG = "AWS_ALLOW_HTTP"


def split_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix may be empty."""
    rest = url[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not bucket or (prefix and any(part in ("", ".", "..") for part in prefix.split("/"))):
        raise StoreError(f"invalid object store root {url!r}: use s3://BUCKET or s3://BUCKET/PREFIX")
    return bucket, prefix


class Conflict(Exception):
    """A conditional put lost: the object exists (create-only) or changed since it was read (If-Match)."""


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    last_modified: datetime


class Bucket:
    """Keys relative to ``s3://bucket/prefix``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(self.url)
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or ""
        allow_http = os.environ.get(HTTP_FLAG, "").lower() == "true"
        if endpoint.startswith("http://") and not allow_http:
            raise StoreError(f"AWS_ENDPOINT_URL {endpoint} is plain http; set {HTTP_FLAG}=true to allow it")
        from obstore.store import S3Store

        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
        # Everything else (keys, session token, region) obstore reads from the AWS_* environment itself.
        try:
            self._store = S3Store(
                self.bucket,
                prefix=self.prefix or None,
                config=config,
                client_options={"allow_http": allow_http},
            )
        except Exception as exc:  # obstore raises its own configuration errors
            raise StoreError(f"cannot open object store {self.url}: {_short(exc)}") from None

    def where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"object store {what} of {self.where(key)} failed: {_short(exc)}")

    def get(self, key: str) -> tuple[bytes, str | None] | None:
        """The object's bytes and ETag, or None when there is none."""
        import obstore

        try:
            result = obstore.get(self._store, key)
            return bytes(result.bytes()), result.meta.get("e_tag")
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("read", key, exc) from None

    def exists(self, key: str) -> bool:
        import obstore

        try:
            obstore.head(self._store, key)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise self._fail("head", key, exc) from None

    def put_new(self, key: str, data: bytes) -> None:
        """Create ``key``; Conflict when it exists (If-None-Match: *)."""
        self._put(key, data, "create")

    def put_if(self, key: str, data: bytes, etag: str | None) -> None:
        """Replace ``key`` if its ETag is still ``etag`` (create it if ``etag`` is None); Conflict otherwise."""
        self._put(key, data, "create" if etag is None else {"e_tag": etag})

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data, "overwrite")

    def _put(self, key: str, data: bytes, mode: PutMode) -> None:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            obstore.put(self._store, key, data, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            raise Conflict(key) from None
        except Exception as exc:
            raise self._fail("write", key, exc) from None

    def upload(self, key: str, path: Path) -> tuple[int, str]:
        """Upload the file at ``path`` (multipart when large); (size, sha256) of exactly the bytes sent."""
        import obstore

        digest = hashlib.sha256()
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
                while chunk := handle.read(PART):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk

        try:
            if path.stat().st_size <= PART:
                data = b"".join(chunks())
                obstore.put(self._store, key, data, use_multipart=False)
            else:
                obstore.put(self._store, key, chunks(), chunk_size=PART, max_concurrency=8)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and exc.filename:
                raise
            raise self._fail("upload", key, exc) from None
        except Exception as exc:
            raise self._fail("upload", key, exc) from None
        return size, digest.hexdigest()

    def download(self, key: str, target: Path) -> tuple[int, str]:
        """Stream ``key`` into a new file ``target``; (size, sha256) of what was written."""
        import obstore

        from jnreg.fsutil import write_all

        digest = hashlib.sha256()
        size = 0
        try:
            result = obstore.get(self._store, key)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for chunk in result.stream(min_chunk_size=PART):
                    data = bytes(chunk)
                    digest.update(data)
                    size += len(data)
                    write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._fail("download", key, exc) from None
        return size, digest.hexdigest()

    def sha256(self, key: str) -> tuple[int, str] | None:
        """(size, sha256) of the object's content, streamed; None when it is missing."""
        import obstore

        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in obstore.get(self._store, key).stream(min_chunk_size=PART):
                data = bytes(chunk)
                digest.update(data)
                size += len(data)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._fail("read", key, exc) from None
        return size, digest.hexdigest()

    def list(self, prefix: str) -> list[Entry]:
        """Every object under ``prefix`` (a folder-like prefix ending in /)."""
        import obstore

        found = []
        try:
            for batch in obstore.list(self._store, prefix, chunk_size=1000):
                for meta in batch:
                    found.append(Entry(meta["path"], meta["size"], meta["last_modified"]))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from None
        return found

    def folders(self, prefix: str | None) -> list[str]:
        """The names one level below ``prefix`` that hold objects."""
        import obstore

        try:
            listed = obstore.list_with_delimiter(self._store, prefix)
        except Exception as exc:
            raise self._fail("list", prefix or "", exc) from None
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"])

    def delete(self, keys: list[str]) -> None:
        import obstore

        if not keys:
            return
        try:
            obstore.delete(self._store, keys)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._fail("delete", keys[0], exc) from None


def _short(exc: Exception) -> str:
    return first_line(exc)[:300]
