"""One search driver per experiment: a lease, the file `driver.lock` in the experiment folder.

Two drivers on one experiment would both restore Tune's state and tell Optuna the same trials. Object
stores have no file locks, so the lock is a lease that works alike on a local disk, a shared filesystem
and a bucket: the driver writes who it is and refreshes the time every HEARTBEAT_S seconds. Another
driver refuses the experiment while that time is recent; it takes the lease over once it is older than
STALE_S (a killed driver stops refreshing), or at once when the holder is a process of this host that
no longer runs.

Every write of the lease is a compare-and-swap: it succeeds only if the lease is still the version the
writer last saw (none, for a new lease). In an S3 bucket that is S3's own conditional PUT (`If-None-Match:
*` to create, `If-Match: <ETag>` to refresh or take over, and `If-Match` on the DELETE that releases it),
through boto3, since pyarrow's filesystems do not expose it: of two drivers starting at once exactly one
creates the lease, and a driver that stalled past STALE_S finds its refresh refused instead of overwriting
its successor's lease. Elsewhere (a local disk, a shared filesystem, other buckets) the swap is a read,
a write and a read back after SETTLE_S: two drivers writing within SETTLE_S of each other are told apart
by whose write landed last.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from raygap import layout, storage
from raygap.errors import StorageError, UserError

HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 0.5  # how long a new holder waits before reading the lease back: a racing driver's write lands first


class DriverLock:
    """`with DriverLock(experiment_dir):` holds the experiment's lease, or raises a UserError naming its holder."""

    def __init__(self, experiment_dir: str):
        self.experiment_dir = experiment_dir
        self.path = storage.join(experiment_dir, layout.LOCK)
        self.lease = S3Lease(self.path) if self.path.startswith("s3://") else FileLease(self.path)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": uuid.uuid4().hex}
        self.version = None  # the version of the lease this driver last wrote
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh, name="raygap-driver-lock", daemon=True)

    def __enter__(self):
        holder, version = self.lease.read()
        if holder and _alive(holder):
            raise UserError(self._refusal(holder))
        if holder is None and storage.exists(self.path):  # written by a driver that crashed in the middle
            print(f"[lock] the lease {self.path} is not whole (a crash cut it short): taken over", flush=True)
        self.version = self.lease.swap(self._record(), version)
        if self.version is None:  # another driver wrote first: it holds the lease
            raise UserError(self._refusal(self.holder() or self.me))
        self._refresher.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._refresher.is_alive():
            self._refresher.join()
        if self.version is not None:
            self.lease.delete(self.version)  # only the version this driver wrote: never a successor's
        if not storage.is_uri(self.experiment_dir):  # a folder only the lease was in (a search refused at once)
            try:
                os.rmdir(self.experiment_dir)
            except OSError:
                pass  # not empty: the search's files stay

    def holder(self) -> dict | None:
        """The lease as its holder wrote it, or None when there is none (or it cannot be read)."""
        return self.lease.read()[0]

    def _record(self) -> bytes:
        return json.dumps({**self.me, "heartbeat": time.time()}).encode()

    def _refresh(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                version = self.lease.swap(self._record(), self.version)
            except StorageError:
                continue  # the next refresh tries again; the search's own writes report a storage that stays down
            if version is None:  # this driver stalled past STALE_S: taken over
                holder = self.holder() or {}
                print(f"raygap: {self.path} was taken over by pid {holder.get('pid')} on {holder.get('host')} while "
                      f"this driver did not refresh it for {STALE_S:.0f} s; stop this driver (Ctrl-C): the other "
                      "one now searches the experiment", file=sys.stderr)
                self.version = None  # nor is it this driver's to release
                return
            self.version = version

    def _refusal(self, holder: dict) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["since"]))
        return (f"experiment {self.experiment_dir} is being searched by another driver (pid {holder['pid']} on "
                f"{holder['host']}, since {since}); wait for it to end, or choose another name=... (a driver "
                f"that stops refreshing {self.path} for {STALE_S:.0f} s is taken over)")


class FileLease:
    """The lease as a file written atomically; its version is its holder's token."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> tuple[dict | None, str | None]:
        try:
            holder = json.loads(storage.read_bytes(self.path))
        except (OSError, ValueError):
            return None, None
        return holder, holder.get("token")

    def swap(self, record: bytes, expected: str | None) -> str | None:
        """Write `record` if the lease is still at version `expected`; its new version, or None if it was not."""
        if self.read()[1] != expected:
            return None
        storage.write_bytes(self.path, record)
        mine = json.loads(record)["token"]
        if expected != mine:  # a new holder: a driver racing it has written by now
            time.sleep(SETTLE_S)
            if self.read()[1] != mine:
                return None
        return mine

    def delete(self, expected: str) -> None:
        if self.read()[1] == expected:
            storage.remove(self.path)


class S3Lease:
    """The lease as an S3 object, every write conditional on its ETag (boto3: pyarrow cannot send the
    preconditions). The endpoint and credentials are boto3's: AWS_ENDPOINT_URL and the usual AWS settings,
    as pyarrow reads them for the rest of the storage."""

    def __init__(self, path: str):
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UserError("a search in an S3 bucket leases its experiment with S3's conditional writes, which "
                            "need boto3: pip install 'raygap[s3]' (or pip install boto3)") from None
        self.path = path
        self.bucket, self.key = path.removeprefix("s3://").split("/", 1)
        # short requests, as raygap's other storage calls (storage.py): a refresh that cannot reach the bucket
        # is tried again at the next heartbeat
        timeouts = Config(connect_timeout=storage.REQUEST_TIMEOUT_S, read_timeout=storage.REQUEST_TIMEOUT_S,
                          retries={"max_attempts": 2})
        self.client = boto3.client("s3", config=timeouts)

    def _call(self, operation: str, **kwargs) -> dict | None:
        """The S3 call's response; None when its precondition failed or the lease is not there."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, Key=self.key, **kwargs)
        except ClientError as err:
            if err.response["Error"]["Code"] in ("PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"):
                return None
            raise StorageError(f"cannot {operation.replace('_', ' ')} {self.path}: {err}; check the bucket and "
                               "its credentials, then run the same command again") from None
        except BotoCoreError as err:
            raise StorageError(f"cannot reach {self.path}: {err}; run the same command again when it answers") \
                from None

    def read(self) -> tuple[dict | None, str | None]:
        response = self._call("get_object")
        if response is None:
            return None, None
        try:
            return json.loads(response["Body"].read()), response["ETag"]
        except ValueError:  # not a lease raygap wrote: only a conditional write on this ETag replaces it
            return None, response["ETag"]

    def swap(self, record: bytes, expected: str | None) -> str | None:
        condition = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
        response = self._call("put_object", Body=record, **condition)
        return response and response["ETag"]

    def delete(self, expected: str) -> None:
        self._call("delete_object", IfMatch=expected)


def _alive(holder: dict) -> bool:
    """Whether the lease's holder may still be running."""
    if time.time() - holder.get("heartbeat", 0) > STALE_S:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it runs, as another user
            return True
    return True
