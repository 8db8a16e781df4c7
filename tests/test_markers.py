"""Tests by kind: the ``data`` marker that conftest.py adds, so that ``pytest -m "not data"`` runs
without the shared datasets."""

from __future__ import annotations

import conftest


def test_every_collected_test_using_a_data_fixture_is_marked_data(request):
    """Across the collected session, a test whose fixture closure holds a data fixture carries the
    marker; this test, which uses none, does not."""
    items = request.session.items
    needs = [
        i
        for i in items
        if (set(conftest.DATA_FIXTURES) | set(getattr(i.module, "DATA_FIXTURES", ()))) & set(i.fixturenames)
    ]
    assert all(i.get_closest_marker("data") for i in needs), [
        i.nodeid for i in needs if not i.get_closest_marker("data")
    ]
    assert request.node.get_closest_marker("data") is None
    mine = [i for i in items if i.nodeid == request.node.nodeid]
    assert mine and mine[0].get_closest_marker("data") is None


def test_the_marker_reaches_tests_through_other_fixtures(pytestconfig):
    """The hook looks at a test's whole fixture closure: an item whose only data fixture is reached
    through another fixture is marked, one without any is not."""

    class Item:
        def __init__(self, fixturenames):
            self.fixturenames, self.module, self.markers = fixturenames, None, []

        def add_marker(self, marker):
            self.markers.append(marker.name)

    through, free = Item(["runs", "tmp_path_factory", "shared_data_dir"]), Item(["tmp_path"])
    conftest.pytest_collection_modifyitems(pytestconfig, [through, free])
    assert through.markers == ["data"] and free.markers == []
