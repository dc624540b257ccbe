"""Signed bundles: the key stays home, and nothing tampered is ever unpickled."""

from __future__ import annotations

import os
import pickle
import stat

import pytest

from nbscale import bundle
from nbscale.errors import NbscaleError, SignatureError


def test_key_is_private_and_never_in_the_bundle(nbscale_home):
    path = bundle.write(nbscale_home / "b.zip", {"kind": "cell"}, {"a.pkl": pickle.dumps(1)})
    key_file = nbscale_home / "keys" / "bundle.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_hex = key_file.read_text().strip()
    raw = path.read_bytes()
    assert key_hex.encode() not in raw and bytes.fromhex(key_hex) not in raw
    found = bundle.read(path, "cell")
    assert pickle.loads(found.part("a.pkl")) == 1
    assert found.manifest["versions"]["python"] and found.manifest["versions"]["cloudpickle"]


def test_a_key_others_can_read_is_refused(nbscale_home):
    bundle.load_key()
    os.chmod(nbscale_home / "keys" / "bundle.key", 0o644)
    with pytest.raises(NbscaleError, match="chmod 600"):
        bundle.write(nbscale_home / "b.zip", {"kind": "cell"}, {})


def test_a_bundle_of_another_kind_is_refused(nbscale_home):
    path = bundle.write(nbscale_home / "r.zip", {"kind": "results"}, {})
    with pytest.raises(SignatureError, match="not a 'cell'"):
        bundle.read(path, "cell")
