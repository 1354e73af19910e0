"""Everything under tests/e2e is marked e2e: `make check` leaves it out, `make test` runs it."""

import pytest


def pytest_itemcollected(item):
    # Called through this folder's hook proxy, so only for items collected below it.
    item.add_marker(pytest.mark.e2e)
