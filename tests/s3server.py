"""A local S3-compatible server for the tests: moto's server mode, on a free port of 127.0.0.1.

It is a real HTTP server (a thread of the test process), so everything reaches it the way it
would reach S3, over TCP: the store in this process, `python -m wtb_conf` and `wtb` as
subprocesses, their forked workers and Ray actors. They find it through the standard
environment (AWS_ENDPOINT_URL and fake credentials), which the `s3` fixture sets for the
duration of a test. A test module takes the fixtures with

    s3, s3_server = s3server.s3, s3server.s3_server
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

# Names botocore reads that could point a test at the user's own AWS account.
_USER_AWS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
             "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")


class S3Server:
    """moto's ThreadedMotoServer, bound to a port the kernel picks."""

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def env(self, tmp: Any) -> dict[str, str]:
        """The environment a boto3 client needs to use this server and nothing else."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "wtb-test",
                "AWS_SECRET_ACCESS_KEY": "wtb-test", "AWS_DEFAULT_REGION": "us-east-1",
                # no ~/.aws: the user's profiles and credentials stay out of the tests
                "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
                "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class Bucket:
    """A test's own bucket: `url` is a blob root in it, `client` a boto3 client to look at
    and tamper with what the store wrote."""

    name: str
    url: str
    prefix: str
    client: Any

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def key(self, blob_id: str) -> str:
        return f"{self.prefix}/objects/{blob_id[:2]}/{blob_id[2:]}"

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)

    def modified(self, key: str) -> float:
        return self.client.head_object(Bucket=self.name, Key=key)["LastModified"].timestamp()


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path) -> Bucket:
    """A new bucket on the session's server, and the environment pointing at the server for
    this test (subprocesses inherit it)."""
    import boto3

    for name in _USER_AWS:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env(tmp_path).items():
        monkeypatch.setenv(name, value)
    name = f"wtb-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server.endpoint)
    client.create_bucket(Bucket=name)
    return Bucket(name, f"s3://{name}/blobs", "blobs", client)
