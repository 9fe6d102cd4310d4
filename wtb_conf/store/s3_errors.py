"""What an object store (s3fs, botocore) raises, told to the user as one StoreError naming the
blob root and what to do (blobdirs.FsspecBlobDir's every call goes through `translated`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from wtb_conf.store.errors import StoreError


def no_bucket(e: FileNotFoundError) -> bool:
    """Whether s3fs raised this for a bucket that does not exist (not for a missing key)."""
    code = (getattr(e.__cause__, "response", None) or {}).get("Error", {}).get("Code")
    return code == "NoSuchBucket" or "bucket does not exist" in str(e)


def endpoint() -> str:
    """The endpoint the requests go to, as a message names it."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f"endpoint {url} (AWS_ENDPOINT_URL)" if url else \
        "AWS's own endpoint (AWS_ENDPOINT_URL is not set)"


def no_bucket_message(root: str, doing: str) -> str:
    """What to do when the bucket of the blob root `root` does not exist."""
    bucket = root[root.index("://") + 3:].split("/", 1)[0]
    return (f"{doing} in {root}: the bucket {bucket!r} does not exist at "
            f"{endpoint()}; create it, or set storage.blob_root to a bucket that "
            "exists")


@contextlib.contextmanager
def translated(root: str, doing: str) -> Iterator[None]:
    """Turn what the object store raises into one StoreError naming the blob root and what
    to do; a missing object stays a FileNotFoundError (objects.py: `... is corrupted`)."""
    try:
        yield
    except FileNotFoundError as e:
        if no_bucket(e):
            raise StoreError(no_bucket_message(root, doing)) from None
        raise
    except PermissionError as e:
        raise StoreError(f"{doing} in {root}: access denied ({e}); check the "
                         "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or "
                         "AWS_PROFILE) and the bucket's policy") from None
    except OSError as e:
        raise StoreError(f"{doing} in {root}: {e}") from None
    except Exception as e:
        kinds = {c.__name__ for c in type(e).__mro__}
        if kinds & {"NoCredentialsError", "PartialCredentialsError"}:
            raise StoreError(f"{doing} in {root}: no credentials for it ({e}); set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                             "AWS_PROFILE)") from None
        if kinds & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionError",
                    "ClientConnectorError"}:
            raise StoreError(f"{doing} in {root}: cannot reach the "
                             f"{endpoint()}: {e}; check the URL and the "
                             "network") from None
        if "BotoCoreError" in kinds or "ClientError" in kinds:
            raise StoreError(f"{doing} in {root}: {e}") from None
        raise
