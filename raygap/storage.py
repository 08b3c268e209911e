"""Files under `storage`: a local folder or any pyarrow filesystem URI (s3://, gs://).

Writes are atomic: on local disk a temporary file is renamed into place; on object stores a single
PUT is atomic by itself. So a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import shutil
import uuid

import pyarrow.fs as pafs

from raygap.errors import StorageError


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A URI as it is; a local path made absolute (with ~ expanded)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    return pafs.FileSystem.from_uri(path) if is_uri(path) else (pafs.LocalFileSystem(), os.path.abspath(path))


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically (a temporary file renamed over it): readers never see half of it."""
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
    fs, where = filesystem(path)
    with fs.open_input_stream(where) as stream:
        return stream.read()


def exists(path: str) -> bool:
    fs, where = filesystem(path)
    return fs.get_file_info(where).type != pafs.FileType.NotFound


def listdir(path: str) -> list[str]:
    """Names of the files directly in folder `path` (none if it does not exist), sorted."""
    fs, where = filesystem(path)
    if fs.get_file_info(where).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(where))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


def remove(path: str) -> None:
    """Delete a file; nothing if it is not there."""
    fs, where = filesystem(path)
    try:
        fs.delete_file(where)
    except FileNotFoundError:
        pass
