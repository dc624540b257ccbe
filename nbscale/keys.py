"""Signing keys: one module, one key per purpose, the same rules everywhere.

Every pickle nbscale moves between processes or machines is covered by an
HMAC-SHA256 with a 256-bit key. Three purposes, three keys, so that a key
handed to one kind of container opens nothing else:

- ``bundle``: cell bundles going to a job and results coming back;
- ``pipeline``: artifacts passed between pipeline steps;
- ``model``: model artifacts (``model.pkl``, ``code/inference.py``).

Where a key comes from, first match wins:

1. ``NBSCALE_KEY_FILE``: a JSON file ``{"bundle": "<hex>", ...}``, as a
   Kubernetes Secret mounted read-only puts it in a pod;
2. ``NBSCALE_KEY_SECRET_ARN``: an AWS Secrets Manager secret with the same
   JSON as its string, read with the standard boto3 credential chain (the
   job's role in SageMaker); only the ARN ever travels;
3. ``$NBSCALE_HOME/keys/<purpose>.key`` on the machine that owns the work,
   created on first use, atomically, mode 0600 in a 0700 folder.

Inside a container there is no home key to create: reading one that is not
delivered fails with a message naming the two settings above. A key file that
group or others can read is refused, wherever it comes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from pathlib import Path

from . import paths
from .errors import NbscaleError, SignatureError

PURPOSES = ("bundle", "pipeline", "model")
KEY_FILE_ENV = "NBSCALE_KEY_FILE"
KEY_SECRET_ENV = "NBSCALE_KEY_SECRET_ARN"
_LEGACY = {"bundle": "bundle.key", "pipeline": "pipeline-signing.key", "model": "model-signing.key"}
_HEX_LEN = 64

_lock = threading.Lock()
_remote_cache: dict[tuple[str, str], dict[str, bytes]] = {}


class SigningKeyError(NbscaleError):
    """A signing key that is missing, malformed or readable by others."""


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown key purpose {purpose!r}; one of {', '.join(PURPOSES)}")


def keys_dir() -> Path:
    path = paths.home() / "keys"
    path.mkdir(mode=0o700, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def key_path(purpose: str) -> Path:
    _check_purpose(purpose)
    return keys_dir() / f"{purpose}.key"


def _platform_volume(path: Path) -> bool:
    """A file in a Kubernetes Secret volume (the kubelet's atomic-writer layout: the file is a
    link into ``..data``). Its mode is the platform's (KFP's secret volumes cannot set
    defaultMode) and the pod's filesystem is the pod's own."""
    return path.is_symlink() and (path.parent / "..data").is_dir()


def _refuse_open(path: Path, delivered: bool = False) -> None:
    if delivered and _platform_volume(path):
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"the signing key {path} can be read by other users",
            f"run: chmod 600 {path} (a mounted Secret needs defaultMode 0400)",
        )


def _parse_hex(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) * 2 != _HEX_LEN:
        raise SigningKeyError(f"{where} is not a 256-bit hex key", "delete it to make a new one")
    return key


def _create(path: Path) -> None:
    """Write a new key beside ``path`` and link it into place: the first writer wins,
    and no reader ever sees a half-written key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
        # the first writer wins; a process that lost the race reads the winner's key
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _adopt_legacy(purpose: str, path: Path) -> None:
    """Homes made before keys/ existed kept each key at the top; move it in once."""
    old = paths.home() / _LEGACY[purpose]
    if old.exists() and not path.exists():
        _refuse_open(old)
        try:
            os.link(old, path)
        except FileExistsError:
            return
        old.unlink(missing_ok=True)


def delivered() -> str | None:
    """The setting through which the platform delivers keys, if any."""
    for env in (KEY_FILE_ENV, KEY_SECRET_ENV):
        if os.environ.get(env):
            return env
    return None


def _from_document(text: str, where: str) -> dict[str, bytes]:
    try:
        doc = json.loads(text)
    except ValueError:
        raise SigningKeyError(
            f"{where} is not the JSON nbscale writes ({{purpose: hex}})"
        ) from None
    if not isinstance(doc, dict):
        raise SigningKeyError(f"{where} is not the JSON nbscale writes ({{purpose: hex}})")
    return {p: _parse_hex(str(v), f"key {p!r} in {where}") for p, v in doc.items() if p in PURPOSES}


def _from_file(path_text: str) -> dict[str, bytes]:
    path = Path(path_text)
    try:
        _refuse_open(path, delivered=True)
        text = path.read_text()
    except FileNotFoundError:
        raise SigningKeyError(
            f"{KEY_FILE_ENV} names {path}, which does not exist",
            "check the Secret volume's mount path",
        ) from None
    return _from_document(text, str(path))


def _from_secrets_manager(arn: str) -> dict[str, bytes]:
    try:
        import boto3
    except ImportError:
        raise SigningKeyError(
            f"{KEY_SECRET_ENV} is set but boto3 is not installed", "install nbscale's runtime"
        ) from None
    from botocore.exceptions import BotoCoreError, ClientError

    region = arn.split(":")[3] if arn.startswith("arn:") and arn.count(":") >= 6 else None
    try:
        client = boto3.client("secretsmanager", region_name=region or None)
        text = client.get_secret_value(SecretId=arn)["SecretString"]
    except (BotoCoreError, ClientError) as exc:
        raise SigningKeyError(
            f"cannot read the signing keys from {arn}: {exc}",
            "the job's role needs secretsmanager:GetSecretValue on that secret",
        ) from None
    return _from_document(text, arn)


def _remote(purpose: str) -> bytes | None:
    setting = delivered()
    if setting is None:
        return None
    value = os.environ[setting]
    with _lock:
        found = _remote_cache.get((setting, value))
        if found is None:
            found = _from_file(value) if setting == KEY_FILE_ENV else _from_secrets_manager(value)
            _remote_cache[(setting, value)] = found
    if purpose not in found:
        raise SignatureError(
            f"the keys delivered through {setting} hold no {purpose!r} key",
            f"deliver it with nbscale.keys.export({purpose!r}, ...)",
        )
    return found[purpose]


def endpoint_token(name: str) -> str:
    """The bearer token of endpoint ``name``, kept in its folder on this machine."""
    from .errors import BackendUnavailable

    path = paths.endpoint_dir(name) / "token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise BackendUnavailable(
            f"the token file of endpoint {name!r} is missing ({path})",
            f"redeploy: nbscale undeploy {name} && nbscale deploy ...",
        ) from None


def load(purpose: str, create: bool = True) -> bytes:
    """The key for ``purpose``: delivered by the platform, else this home's own."""
    _check_purpose(purpose)
    key = _remote(purpose)
    if key is not None:
        return key
    path = key_path(purpose)
    _adopt_legacy(purpose, path)
    if create and not path.exists():
        _create(path)
    try:
        _refuse_open(path)
        text = path.read_text()
    except FileNotFoundError:
        raise SignatureError(
            f"no {purpose} signing key: neither {KEY_FILE_ENV} nor {KEY_SECRET_ENV} is set, "
            f"and {path} does not exist",
            f"in a container, set {KEY_FILE_ENV} to the mounted Secret or {KEY_SECRET_ENV} to "
            "the Secrets Manager ARN; on a machine, set NBSCALE_HOME to the home that signed it",
        ) from None
    return _parse_hex(text, str(path))


def export(*purposes: str) -> str:
    """The JSON document a platform secret holds: only the purposes asked for."""
    for purpose in purposes:
        _check_purpose(purpose)
    return json.dumps({p: load(p).hex() for p in purposes}, sort_keys=True)


def fingerprint(purpose: str) -> str:
    """A short, non-secret name of the key (to tell two keys apart in a message)."""
    return hashlib.sha256(b"nbscale-key-id:" + load(purpose)).hexdigest()[:12]


def sign(data: bytes, purpose: str, key: bytes | None = None) -> str:
    return hmac.new(key or load(purpose), data, hashlib.sha256).hexdigest()


def verify(data: bytes, signature: str, purpose: str, key: bytes | None = None) -> bool:
    expected = hmac.new(key or load(purpose, create=False), data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, str(signature))


def forget_delivered() -> None:
    """Drop keys read from a file or a secret (tests switch between settings)."""
    with _lock:
        _remote_cache.clear()
