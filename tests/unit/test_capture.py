"""Capture without IPython: free names, what travels how, and pre-flight refusals."""

from __future__ import annotations

import pickle
import sys
import threading
import types

import pytest

from nbscale.capture import CaptureError, capture, free_names, load_value


def test_free_names_follow_execution_order_and_scopes():
    src = (
        "import os\n"
        "x = x + 1\n"
        "y += 2\n"
        "for i in range(n):\n"
        "    total = total + f(i)\n"
        "def g(a, b=default):\n"
        "    return a + helper(b) + g(1) + os.sep\n"
        "class A(Base):\n"
        "    k = kk\n"
        "    def m(self):\n"
        "        return self.k + outer + A\n"
        "sq = [v * scale for v in data]\n"
        "h = lambda q: q + w\n"
        "try:\n"
        "    pass\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    now, later = free_names(src)
    assert now == [
        "x",
        "y",
        "range",
        "n",
        "total",
        "f",
        "default",
        "Base",
        "data",
        "ValueError",
        "print",
    ]
    # names read only inside functions/classes/comprehensions, never bound by the cell
    assert later == ["helper", "kk", "outer", "scale", "w"]


def test_a_name_bound_before_use_is_not_free():
    now, later = free_names("model = make()\nmodel.fit(data)\nwith open(p) as fh:\n    fh.read()\n")
    assert now == ["make", "data", "open", "p"]
    assert later == []


def test_modules_and_importable_objects_become_import_statements():
    import json as js
    import os.path
    from collections import OrderedDict as OD
    from os import path
    from xml import dom

    ns = {
        "js": js,
        "os": sys.modules["os"],
        "path": path,
        "dom": dom,
        "OD": OD,
        "pjoin": os.path.join,
    }
    cap = capture("print(js.dumps(1), os.sep, path.sep, dom, OD(), pjoin('a'))", ns)
    assert cap.imports == [
        "import json as js",
        "import os",
        "import posixpath as path",  # what os.path really is
        "from xml import dom",
        "from collections import OrderedDict as OD",
        "from posixpath import join as pjoin",
    ]
    assert cap.inputs == []


def test_notebook_functions_lambdas_closures_and_classes_travel_by_value():
    # made in a fake __main__, as a notebook would, so pickle cannot take them by reference
    main = types.ModuleType("__main__")
    exec(
        "factor = 3\n"
        "def make(k):\n"
        "    return lambda v: v * k * factor\n"
        "class Point:\n"
        "    def __init__(self, x):\n"
        "        self.x = x\n",
        main.__dict__,
    )
    ns = {"times2": main.make(2), "Point": main.Point, "p": main.Point(4), "sq": lambda v: v * v}
    cap = capture("print(times2(1), Point(1), p.x, sq(3))", ns)
    kinds = {i.name: (i.kind, i.how) for i in cap.items}
    assert kinds == {
        "times2": ("function", "cloudpickle"),
        "Point": ("class", "cloudpickle"),
        "p": ("object", "cloudpickle"),
        "sq": ("function", "cloudpickle"),
    }
    loaded = {i.name: load_value(cap.parts[i.part], i.how) for i in cap.inputs}
    assert loaded["times2"](5) == 30 and loaded["sq"](3) == 9 and loaded["p"].x == 4
    assert all(i.size > 0 for i in cap.inputs)


def test_tensors_and_modules_use_torch_save():
    import torch

    ns = {"t": torch.arange(6.0), "layer": torch.nn.Linear(2, 2)}
    cap = capture("print(t, layer)", ns)
    assert {i.name: (i.kind, i.how) for i in cap.items} == {
        "t": ("tensor", "torch.save"),
        "layer": ("module", "torch.save"),
    }
    t = load_value(cap.parts[cap.items[0].part], "torch.save")
    assert torch.equal(t, ns["t"])


def test_unpicklable_inputs_are_named_with_reason_and_hint(tmp_path):
    fh = open(tmp_path / "data.txt", "w")  # noqa: SIM115 - the point is an open file
    ns = {
        "fh": fh,
        "gen": (i for i in range(3)),
        "lock": threading.Lock(),
        "config": {"ok": 1, "inner": {"stream": fh}},
        "fine": [1, 2, 3],
    }
    with pytest.raises(CaptureError) as err:
        capture("print(fh, gen, lock, config, fine)", ns)
    fh.close()
    problems = {name: reason for name, reason, _ in err.value.problems}
    assert problems == {
        "fh": "is an open file",
        "gen": "is a generator, whose position cannot be copied to another process",
        "lock": "is a lock, which only works inside one process",
        "config['inner']['stream']": "is an open file",
    }
    assert "nothing was submitted" in str(err.value)
    assert "open the file inside the cell" in str(err.value)


def test_an_object_that_pickles_but_does_not_unpickle_is_refused():
    main = types.ModuleType("__main__")
    exec(
        "class OneWay:\n    def __reduce__(self):\n        return (int, ('not a number',))\n",
        main.__dict__,
    )
    with pytest.raises(CaptureError) as err:
        capture("print(obj)", {"obj": main.OneWay()})
    assert err.value.problems[0][0] == "obj"
    assert "does not unpickle" in err.value.problems[0][1]


def test_a_name_the_cell_needs_but_the_notebook_lacks_is_an_error():
    with pytest.raises(CaptureError) as err:
        capture("print(undefined_thing + 1)", {})
    assert err.value.problems[0][:2] == (
        "undefined_thing",
        "is used by the cell but not defined in the notebook",
    )


def test_inputs_override_the_analysis_but_modules_still_follow():
    import math

    ns = {"a": 1, "b": 2, "math": math}
    cap = capture("print(a, b, math.pi)", ns, inputs=["b"])
    assert [i.name for i in cap.items] == ["b", "math"]
    with pytest.raises(CaptureError) as err:
        capture("print(a)", ns, inputs=["nope"])
    assert err.value.problems[0][0] == "nope"


def test_local_modules_travel_as_source(tmp_path, monkeypatch):
    (tmp_path / "helpers_cap.py").write_text("def double(v):\n    return 2 * v\n")
    pkg = tmp_path / "mypkg_cap"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ops.py").write_text("def inc(v):\n    return v + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helpers_cap as hp
    from mypkg_cap.ops import inc

    try:
        cap = capture("print(hp.double(1), inc(2))", {"hp": hp, "inc": inc}, cwd=str(tmp_path))
    finally:
        for name in ("helpers_cap", "mypkg_cap", "mypkg_cap.ops"):
            sys.modules.pop(name, None)
    assert cap.imports == ["import helpers_cap as hp", "from mypkg_cap.ops import inc"]
    assert cap.modules == [
        "src/helpers_cap.py",
        "src/mypkg_cap/__init__.py",
        "src/mypkg_cap/ops.py",
    ]
    assert cap.parts["src/mypkg_cap/ops.py"] == (pkg / "ops.py").read_bytes()


def test_report_lists_every_item_with_sizes():
    cap = capture(
        "print(data, json)", {"data": list(range(100)), "json": sys.modules["json"]}, outputs=["r"]
    )
    text = cap.report().text()
    assert (
        "data" in text and "cloudpickle" in text and "import json" in text and "outputs: r" in text
    )
    bundle = cap.report()._repr_mimebundle_()
    assert "<table>" in bundle["text/html"]
    assert pickle.loads(cap.parts[cap.items[0].part]) == list(range(100))
