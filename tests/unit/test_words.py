from nbscale.words import count, plural


def test_counts_read_singular_for_one_and_plural_otherwise():
    assert count(1, "node") == "1 node"
    assert count(2, "node") == "2 nodes"
    assert count(0, "GPU") == "0 GPUs"
    assert count(1, "GPU") == "1 GPU"
    assert count(1, "process") == "1 process"
    assert count(8, "process") == "8 processes"
    assert plural("entry", 3) == "entries" and plural("entry", 1) == "entry"
