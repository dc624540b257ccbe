"""Writes the example notebooks (both forms) from the cell sources below; run it after editing them."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent

IMPORTS = (
    "from sklearn.datasets import load_digits\nfrom sklearn.model_selection import train_test_split"
)
PARAMS = "seed = 0\ntest_size = 0.25\nC = 1.0\nn_estimators = 50"
PREPARE = (
    "digits = load_digits()\n"
    "X_train, X_test, y_train, y_test = train_test_split(\n"
    "    digits.data / 16.0, digits.target, test_size=test_size, random_state=seed)\n"
    "print(X_train.shape, X_test.shape)"
)
TRAIN_A = (
    "from sklearn.linear_model import LogisticRegression\n\n"
    "model_a = LogisticRegression(C=C, max_iter=300).fit(X_train, y_train)\n"
    "acc_a = float(model_a.score(X_test, y_test))\nprint('logistic regression', acc_a)"
)
TRAIN_B = (
    "from sklearn.ensemble import RandomForestClassifier\n\n"
    "model_b = RandomForestClassifier(n_estimators=n_estimators, random_state=seed).fit(X_train, y_train)\n"
    "acc_b = float(model_b.score(X_test, y_test))\nprint('random forest', acc_b)"
)
COMPARE = (
    "from scoring import summary\n\n"
    "best, table = summary({'logistic_regression': acc_a, 'random_forest': acc_b})\n"
    "print(table)\nprint('best:', best)"
)


def cell(kind: str, source: str, tags: list[str] | None = None) -> dict:
    out = {"cell_type": kind, "metadata": {"tags": tags or []}, "source": source}
    if kind == "code":
        out.update(outputs=[], execution_count=None)
    return out


def notebook(cells: list[dict]) -> dict:
    for i, c in enumerate(cells):
        c["id"] = f"c{i}"
    return {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
    }


def write(name: str, cells: list[dict]) -> None:
    (HERE / name).write_text(json.dumps(notebook(cells), indent=1) + "\n")


write(
    "digits.ipynb",
    [
        cell(
            "markdown",
            "# Digits: one notebook, four steps\nCell tags (Kale's vocabulary) make this a pipeline: "
            "`nbscale pipeline run digits.ipynb`.",
        ),
        cell("code", IMPORTS, ["imports"]),
        cell("code", PARAMS, ["pipeline-parameters"]),
        cell("code", PREPARE, ["step:prepare"]),
        cell("code", TRAIN_A, ["step:train_a", "prev:prepare"]),
        cell("code", TRAIN_B, ["step:train_b", "prev:prepare"]),
        cell("markdown", "Compare the two models."),
        cell("code", COMPARE, ["step:compare", "prev:train_a", "prev:train_b"]),
        cell("code", "X_train.shape  # scratch work, left out of the pipeline", ["skip"]),
    ],
)
# in the one-notebook-per-step form, names from upstream steps look undefined to a linter
UPSTREAM = "# ruff: noqa: F821\n# (X_train, y_train, ... and acc_a, acc_b arrive from the upstream steps)\n"

write(
    "prepare.ipynb",
    [
        cell("code", IMPORTS),
        cell("code", "seed = 0\ntest_size = 0.25", ["parameters"]),
        cell("code", PREPARE),
    ],
)
write("train_a.ipynb", [cell("code", "C = 1.0", ["parameters"]), cell("code", UPSTREAM + TRAIN_A)])
write(
    "train_b.ipynb",
    [cell("code", "seed = 0\nn_estimators = 50", ["parameters"]), cell("code", UPSTREAM + TRAIN_B)],
)
write("compare.ipynb", [cell("code", UPSTREAM + COMPARE)])
