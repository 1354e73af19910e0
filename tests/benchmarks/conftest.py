"""tests/benchmarks print figures (run with -s): they start Mosquitto and the simulated board, so
they are marked e2e as tests/e2e is (`make check` leaves them out)."""

import pytest


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.e2e)
