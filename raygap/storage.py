"""Files under `storage`: a local folder or any pyarrow filesystem URI (s3://, gs://).

Writes are atomic: on local disk a temporary file is renamed into place; on object stores a single
PUT is atomic by itself. So a crash never leaves a half-written file behind.

A bucket that stops answering for a while does not end a search: each request to it gives up after
REQUEST_TIMEOUT_S (pyarrow's own retries would hold a call for about 100 s without a word), and raygap's
reads and writes are retried with a doubling back-off, one line saying so, for up to RETRY_S in all
(RAYGAP_STORAGE_RETRY_S); after that the call raises a StorageError, which stops the search with one line
and leaves it to resume by the same command. The probe before a search (check_writable) is not retried:
a storage that cannot be written at the start is refused at once.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid

import pyarrow.fs as pafs

from raygap.errors import StorageError

REQUEST_TIMEOUT_S = 10.0
RETRY_S = float(os.environ.get("RAYGAP_STORAGE_RETRY_S", 300))
# what pyarrow's S3 errors say when the store did not answer or asked to be called again later
TRANSIENT = ("NETWORK_CONNECTION", "curlCode", "SERVICE_UNAVAILABLE", "SLOW_DOWN", "INTERNAL_FAILURE",
             "REQUEST_TIMEOUT", "THROTTLING")


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute (with ~ expanded)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    fs, where = pafs.FileSystem.from_uri(path)
    if isinstance(fs, pafs.S3FileSystem):  # pyarrow's reading of the URI (region, endpoint), with short requests
        rebuild, (options,) = fs.__reduce__()
        fs = rebuild({**options, "request_timeout": REQUEST_TIMEOUT_S, "connect_timeout": REQUEST_TIMEOUT_S,
                      "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2)})
    return fs, where


def _transient(err: OSError) -> bool:
    return any(mark in str(err) for mark in TRANSIENT)


def retried(path: str, operation):
    """`operation()`, retried while the bucket of `path` does not answer (module docstring)."""
    if not is_uri(path):
        return operation()
    delay, deadline = 1.0, None
    while True:
        try:
            return operation()
        except FileNotFoundError:
            raise
        except OSError as err:
            if not _transient(err):
                raise
            reason = " ".join(str(err.strerror or err).split())
            if deadline is None:
                deadline = time.monotonic() + RETRY_S
                print(f"raygap: storage {path} does not answer ({reason[:160]}); retrying for up to {RETRY_S:.0f} s",
                      file=sys.stderr, flush=True)
            if time.monotonic() >= deadline:
                raise StorageError(f"storage {path} did not answer for {RETRY_S:.0f} s ({reason[:160]}); the search "
                                   "stopped with what it had written: run the same command again to resume when it "
                                   "answers (RAYGAP_STORAGE_RETRY_S sets how long to wait)") from None
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(2 * delay, 30.0)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically (a temporary file renamed over it): readers never see half of it."""
    retried(path, lambda: _write_bytes(path, data))


def _write_bytes(path: str, data: bytes) -> None:
    fs, where = filesystem(path)
    parent = where.rsplit("/", 1)[0]
    tmp = f"{parent}/.{os.path.basename(where)}.{uuid.uuid4().hex}.tmp"
    try:
        fs.create_dir(parent, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, where)
        else:  # object stores write a whole object at once
            with fs.open_output_stream(where) as out:
                out.write(data)
    except OSError as err:  # pyarrow's errors are OSErrors too
        if os.path.exists(tmp):
            os.remove(tmp)
        if _transient(err):
            raise  # for retried() to wait on
        raise StorageError(f"cannot write {path}: {err.strerror or err}; make the storage writable (or choose "
                           "another with storage=...) and run the same command again to resume") from None


def check_writable(path: str) -> None:
    """Refuse, with one line, a storage that cannot be reached or written: before any work starts, and
    leaving nothing behind (a probe file is written and deleted, with any folder made for it)."""
    fs, where = filesystem(path)
    made = None  # the outermost local folder the probe makes
    if isinstance(fs, pafs.LocalFileSystem):
        top = where
        while not os.path.lexists(top):
            made, top = top, os.path.dirname(top)
    probe = f"{where}/.raygap-probe-{uuid.uuid4().hex}"
    try:
        if made:
            fs.create_dir(where, recursive=True)
        with fs.open_output_stream(probe):
            pass
        fs.delete_file(probe)
    except OSError as err:
        reason = " ".join(str(err.strerror or err).split())
        raise StorageError(f"storage {path} cannot be written: {reason}; check that it exists and that you may write "
                           "there (for a bucket: its name, the credentials and, for a non-AWS endpoint, "
                           "AWS_ENDPOINT_URL), or choose another with storage=...") from None
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


def read_bytes(path: str) -> bytes:
    def read():
        fs, where = filesystem(path)
        with fs.open_input_stream(where) as stream:
            return stream.read()
    return retried(path, read)


def exists(path: str) -> bool:
    def look():
        fs, where = filesystem(path)
        return fs.get_file_info(where).type != pafs.FileType.NotFound
    return retried(path, look)


def listdir(path: str) -> list[str]:
    """Names of the files directly in folder `path` (none if it does not exist), sorted."""
    def list_files():
        fs, where = filesystem(path)
        if fs.get_file_info(where).type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(where))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return retried(path, list_files)


def remove(path: str) -> None:
    """Delete a file; nothing if it is not there."""
    def delete():
        fs, where = filesystem(path)
        try:
            fs.delete_file(where)
        except FileNotFoundError:
            pass
    retried(path, delete)
