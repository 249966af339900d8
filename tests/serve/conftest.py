"""A real `mirage serve` on 127.0.0.1 (its own event loop in a thread) with synthetic models,
and an aiortc client on another loop: everything over loopback."""

from __future__ import annotations

import asyncio
import threading

import cv2
import numpy as np
import pytest

pytest.importorskip("aiortc", reason="the serve extra is not installed (pip install 'mirage-desktop[serve]')")

from tests_support import HANG_GUARD_S  # noqa: E402

from mirage_desktop.config import Settings  # noqa: E402
from mirage_desktop.engine import Engine  # noqa: E402
from mirage_desktop.serve.app import AppThread, ServeConfig, Server  # noqa: E402
from mirage_desktop.serve.auth import make_token  # noqa: E402
from mirage_desktop.serve.tracks import restrict_ice_addresses  # noqa: E402

from serve_support import SECRET, SIZE  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _loopback_ice():
    restrict_ice_addresses(["127.0.0.1"])  # media over loopback only, like a server bound to it
    yield
    restrict_ice_addresses(None)


@pytest.fixture(scope="session")
def frame(astronaut) -> np.ndarray:
    return cv2.resize(astronaut, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def shared_engine(model_factory, astronaut):
    eng = Engine(Settings(), model_overrides=model_factory(astronaut))
    eng.load_models()
    return eng


@pytest.fixture
def serve(shared_engine):
    """Start a server: ``serve(**config)`` -> (AppThread, Server); stopped after the test."""
    started = []

    def start(port: int = 0, **kw):
        cfg = ServeConfig(secret=SECRET, host="127.0.0.1", port=port, **kw)
        server = Server(cfg, shared_engine)
        t = AppThread(server.make_app, "127.0.0.1", port).start()
        started.append((t, server))
        return t, server

    yield start
    for t, server in started:
        if t.loop is not None and t.loop.is_running():
            t.call(server.close_all("test over"))
        t.stop()


@pytest.fixture
def token():
    return make_token(SECRET, 3600)


class ClientLoop:
    """An event loop in a thread for aiortc clients: ``run(coro)`` waits for its result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-client", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = HANG_GUARD_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG_GUARD_S)
        self.loop.close()


@pytest.fixture
def client_loop():
    c = ClientLoop()
    yield c
    c.close()
