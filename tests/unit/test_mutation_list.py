"""The mutation run's list stays applicable: every old snippet occurs exactly once in its file, every
mutant changes the code, and every test file it names (either tier) exists (tests/mutation/run.py)."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from tests.mutation.mutations import MUTATIONS


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_once_and_names_real_tests(m):
    source = (REPO_ROOT / m.file).read_text()
    assert source.count(m.old) == 1, f"{m.old!r} occurs {source.count(m.old)} times in {m.file}"
    assert m.new != m.old and source.replace(m.old, m.new) != source
    assert m.tests and all((REPO_ROOT / t).is_file() for t in m.tests), m.tests
    assert all((REPO_ROOT / t).is_file() for t in m.broader), m.broader


def test_the_seven_bugs_of_issue_20_are_listed():
    assert sum(m.issue20 for m in MUTATIONS) == 7
    assert len({m.name for m in MUTATIONS}) == len(MUTATIONS)
