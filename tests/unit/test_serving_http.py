"""The serving runtime's request decoding and batching, in-process: out-of-range values and
overflowing shapes, .npy headers checked before allocating, each request alone without batching."""

from __future__ import annotations

import numpy as np
import pytest

from nbscale.serving.protocol import ProtocolError, TensorSpec, check_npy, decode_array
from tests.support.npy import npy_bytes, npy_header


def test_out_of_range_values_and_overflowing_shapes_are_400_that_say_why():
    u8 = TensorSpec("x", (-1, 2), "UINT8")
    f32 = TensorSpec("x", (-1, 2), "FP32")
    cases = [
        (u8, [1, 2], "UINT8", [300, 1], "out of range for UINT8"),
        (u8, [1, 2], "UINT8", [-1, 1], "out of range for UINT8"),
        (u8, [1, 2], "UINT8", [1.5, 1], "whole numbers"),
        (f32, [1, 2], "FP32", [1e300, 1], "out of range for FP32"),
        (f32, [1, 2], "FP32", ["1.5", 1], "not numbers"),
        (f32, [2**62, 2], "FP32", [1, 2], "2 values given"),
        (f32, [2**64, 2], "FP32", [1, 2], "2 values given"),
        (f32, [True, 2], "FP32", [1, 2], "non-negative integers"),
        (f32, [0, 2], "FP32", [], "no rows"),
        (TensorSpec("x", (-1, 2), "INT64"), [1, 2], "INT64", [2**70, 1], "not numbers"),
    ]
    for spec, shape, dtype, data, needle in cases:
        with pytest.raises(ProtocolError) as err:
            decode_array(spec, shape, dtype, data)
        assert err.value.status == 400 and needle in err.value.message, (data, err.value.message)
    np.testing.assert_array_equal(decode_array(u8, [1, 2], "UINT8", [255, 0]), [[255, 0]])
    # a binary tensor whose shape overflows int64 is refused, not wrapped to 0 elements
    with pytest.raises(ProtocolError, match="bytes of binary data"):
        decode_array(f32, [2**62, 2], "FP32", None, raw=b"")


def test_a_npy_header_is_checked_before_anything_is_allocated():
    spec = TensorSpec("x", (-1, 64), "FP32")
    huge = b"\x93NUMPY\x01\x00" + npy_header([2**40, 64], "<f4")
    with pytest.raises(ProtocolError, match="declares shape"):
        check_npy(huge, spec)
    with pytest.raises(ProtocolError, match="shape"):
        check_npy(npy_bytes(np.ones((2, 3), np.float32)), spec)
    with pytest.raises(ProtocolError, match="dtype"):
        check_npy(b"\x93NUMPY\x01\x00" + npy_header([1, 64], "|O"), spec)
    check_npy(npy_bytes(np.ones((2, 64), np.float32)), spec)
    check_npy(npy_bytes(np.ones(64, np.float32)), spec)  # one row without the batch axis


def test_batching_off_runs_each_request_alone_with_its_own_rows():
    import asyncio

    from nbscale.serving.batching import Batcher

    async def go():
        sizes: list[int] = []
        b = Batcher(lambda x: x * 2, max_batch_size=1, on_batch=lambda n, s: sizes.append(n))
        b.start()
        first = await b.submit(np.full((1, 2), -1, np.float32))  # measured: then the direct path
        outs = await asyncio.gather(*(b.submit(np.full((1, 2), i, np.float32)) for i in range(20)))
        await b.stop()
        return first, outs, sizes

    first, outs, sizes = asyncio.run(go())
    np.testing.assert_array_equal(first, [[-2, -2]])
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.full((1, 2), 2 * i))
    assert sizes == [1] * 21
