"""``PYTHONPATH=tests python -m pytest -p reverse_order ...``: the collected tests in reverse
order, one of the checks that no test's outcome depends on the order it runs in (issue 33)."""


def pytest_collection_modifyitems(items):
    items.reverse()
