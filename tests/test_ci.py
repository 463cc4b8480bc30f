"""Under CI=true a missing tool fails the test that needs it instead of skipping it."""

from __future__ import annotations

import pytest

from tests import conftest


@pytest.mark.parametrize(
    ("in_ci", "outcome"), [(True, pytest.fail.Exception), (False, pytest.skip.Exception)]
)
def test_missing_tool_fails_only_under_ci(monkeypatch, in_ci, outcome):
    monkeypatch.setattr(conftest, "IN_CI", in_ci)
    with pytest.raises(outcome, match="no-such-tool"):
        conftest.import_tool("no_such_tool_module", "pip install no-such-tool")
