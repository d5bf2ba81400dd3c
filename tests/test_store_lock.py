"""One agent per store: a second agent working on the same store is refused, clearly."""

from __future__ import annotations

import pytest

from agent.errors import StoreError
from agent.store.db import Store
from agent.store.lock import store_lock


def test_a_second_agent_on_the_same_store_is_refused_until_the_first_is_done(database_url):
    first, second = Store(database_url), Store(database_url)
    try:
        with store_lock(first):
            with pytest.raises(StoreError) as refused:
                with store_lock(second):
                    pass
            assert "another cal-agent is working on" in str(refused.value)
            assert refused.value.exit_code == 4
        with store_lock(second):  # released: the next cycle may run
            pass
    finally:
        first.close()
        second.close()


def test_the_sqlite_lock_names_the_process_holding_it(tmp_path):
    import os

    store = Store(f"sqlite:///{tmp_path}/state.db")
    other = Store(f"sqlite:///{tmp_path}/state.db")
    with store_lock(store):
        with pytest.raises(StoreError) as refused:
            with store_lock(other):
                pass
    assert f"pid {os.getpid()}" in str(refused.value)


def test_agents_with_different_databases_do_not_block_each_other(tmp_path, database_url):
    a = Store(database_url)
    b = Store(f"sqlite:///{tmp_path}/other.db")
    with store_lock(a), store_lock(b):
        pass
