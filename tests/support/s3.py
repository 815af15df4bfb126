"""S3 on loopback for tests: moto in server mode with IAM auth on, so wrong keys are really rejected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
import httpx
import pytest

from berth.adapters.mlserver_proc import free_port
from tests.support.models import train_sklearn

BUCKET = "models"


@dataclass
class S3:
    endpoint: str
    key_id: str
    secret: str

    def rclone_secret(self, *, key_id: str | None = None, secret: str | None = None) -> dict[str, str]:
        """The seed manifest's Secret (financial-ml/05-secret.yaml) pointed at this server."""
        return {"s3": f"""type: s3
name: s3
parameters:
  provider: minio
  env_auth: false
  access_key_id: {key_id or self.key_id}
  secret_access_key: {secret or self.secret}
  endpoint: {self.endpoint}
"""}

    def plain_secret(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with moto_server() as (endpoint, admin):
        yield setup_iris_bucket(endpoint, admin, tmp_path_factory)


@contextmanager
def moto_server() -> Iterator[tuple[str, dict[str, str]]]:
    """A moto S3 server on a free loopback port; yields (endpoint, admin client kwargs)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()  # moto's state is per process: start clean
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "admin",
             "aws_secret_access_key": "admin"}
    try:
        yield endpoint, admin
    finally:
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf")
        server.stop()


def user_with_keys(admin: dict[str, str], user: str = "ml-platform") -> tuple[str, str]:
    """An IAM user allowed every S3 action; returns (access key id, secret access key)."""
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def enforce_auth(endpoint: str) -> None:
    """From now on the server checks every request's credentials."""
    httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()


def setup_iris_bucket(endpoint: str, admin: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> S3:
    key_id, secret = user_with_keys(admin)
    client = boto3.client("s3", **admin)
    client.create_bucket(Bucket=BUCKET)
    model = train_sklearn(tmp_path_factory.mktemp("train") / "iris")
    client.upload_file(str(model / "model.joblib"), BUCKET, "iris/v1/model.joblib")
    client.put_object(Bucket=BUCKET, Key="iris/v1/meta/info.txt", Body=b"trained by the test")
    client.put_object(Bucket=BUCKET, Key="iris/v1-other/ignored.txt", Body=b"not part of iris/v1")
    enforce_auth(endpoint)
    return S3(endpoint, key_id, secret)
