"""server/heap.py: the startup heap is frozen once the engine is up, so a full collection under load
walks only what requests made (an unfrozen one took 100-200 ms with the GIL held and stalled health)."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from server.app import create_app
from server.heap import freeze_startup_heap
from server.settings import ServerSettings

try:
    from ._server_fakes import FakeBackend, Script, tiny_spec
except ImportError:
    from _server_fakes import FakeBackend, Script, tiny_spec


class _Survivor:
    pass


def _tracked(obj) -> bool:
    return any(o is obj for generation in range(3) for o in gc.get_objects(generation))


def test_freeze_exempts_what_exists_from_collections():
    gc.unfreeze()
    survivor = _Survivor()
    assert _tracked(survivor)
    try:
        frozen = freeze_startup_heap()
        # frozen objects can still be freed by their refcount (another thread's, say): never more than frozen
        assert 0 < gc.get_freeze_count() <= frozen
        assert not _tracked(survivor)  # collections no longer walk it
        made_after = _Survivor()
        assert _tracked(made_after)  # what requests make is still collected
    finally:
        gc.unfreeze()


def test_the_app_freezes_after_the_backend_starts():
    gc.unfreeze()
    backend = FakeBackend(Script(["hi"]), spec=tiny_spec(max_model_len=256))
    try:
        assert gc.get_freeze_count() == 0
        with TestClient(create_app(ServerSettings(), backend)) as client:
            assert gc.get_freeze_count() > 0
            assert client.get("/v1/health/live").status_code == 200
    finally:
        gc.unfreeze()
