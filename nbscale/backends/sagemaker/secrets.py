"""The signing keys a SageMaker container needs, in an AWS Secrets Manager secret.

nbscale creates (or updates) one secret per backend and set of purposes, holding
``nbscale.keys.export(...)``; only its ARN goes into a request, as
``NBSCALE_KEY_SECRET_ARN``. The job's (or model's) IAM role needs
``secretsmanager:GetSecretValue`` on it. Key bytes are never logged or stored.
"""

from __future__ import annotations

import threading

from ... import keys

_cache: dict[tuple[str, str, str], str] = {}
_lock = threading.Lock()


def secret_name(base: str, purposes: tuple[str, ...]) -> str:
    return f"{base}/{'-'.join(purposes)}"


def ensure(client, base_name: str, purposes: tuple[str, ...], kms_key_id: str | None = None) -> str:
    """The ARN of the secret holding this home's keys for ``purposes``; created or updated."""
    from botocore.exceptions import ClientError

    name = secret_name(base_name, purposes)
    fingerprint = "-".join(keys.fingerprint(p) for p in purposes)
    cache_key = (str(client.meta.endpoint_url), name, fingerprint)
    with _lock:
        if cache_key in _cache:
            return _cache[cache_key]
    document = keys.export(*purposes)
    try:
        extra = {"KmsKeyId": kms_key_id} if kms_key_id else {}
        arn = client.create_secret(
            Name=name,
            SecretString=document,
            Description=f"nbscale signing keys ({', '.join(purposes)}); read by nbscale containers",
            Tags=[{"Key": "nbscale:keys", "Value": ",".join(purposes)}],
            **extra,
        )["ARN"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceExistsException":
            raise
        arn = client.put_secret_value(SecretId=name, SecretString=document)["ARN"]
    with _lock:
        _cache[cache_key] = arn
    return arn


def lookup(client, base_name: str, purposes: tuple[str, ...]) -> str | None:
    """The ARN of an existing secret, without writing anything (for ``--dry-run``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.describe_secret(SecretId=secret_name(base_name, purposes))["ARN"]
    except (ClientError, BotoCoreError):
        return None
