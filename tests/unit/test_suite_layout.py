"""The suite's own layout: pytest imports test files by their basename (no
packages), so two files with one name in different directories break
collection of the whole suite."""
from __future__ import annotations

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    names = collections.Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py")
    assert [n for n, count in names.items() if count > 1] == []
