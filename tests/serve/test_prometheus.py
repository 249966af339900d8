"""The shipped scrape configuration (docs/serving/prometheus.yml) against Debian's real
Prometheus: it scrapes a running `mirage serve` with its token and stores the documented series."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest
from tests_support import HANG_GUARD_S

from mirage_desktop.serve.exposition import SERIES

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "docs" / "serving" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")


def test_the_shipped_config_is_valid_for_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("Debian's prometheus is not installed (scripts/setup-env.sh)")
    text = SHIPPED.read_text()
    r = subprocess.run([promtool, "check", "config", "--syntax-only", str(SHIPPED)], capture_output=True,
                       text=True, timeout=HANG_GUARD_S)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "type: Bearer" in text and "/metrics" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed (scripts/setup-env.sh)")
def test_prometheus_scrapes_mirage_serve_with_the_shipped_config(serve, token, client_loop, tmp_path):
    t, server = serve(max_sessions=3)
    (tmp_path / "mirage.token").write_text(token)
    cfg = SHIPPED.read_text()
    # the shipped file, pointed at this test's server: plain HTTP on loopback, the token file here
    cfg = cfg.replace("scheme: https", "scheme: http").replace("/etc/prometheus/mirage.token",
                                                                str(tmp_path / "mirage.token"))
    cfg = cfg.replace("scrape_interval: 15s", "scrape_interval: 1s")
    lines = [ln for ln in cfg.splitlines() if "ca_file" not in ln and "tls_config" not in ln]
    cfg = "\n".join(lines).replace("- mirage-1.internal:8443", f"- 127.0.0.1:{t.port}")
    cfg = "\n".join(ln for ln in cfg.splitlines() if "mirage-2.internal" not in ln)
    (tmp_path / "prometheus.yml").write_text(cfg)
    port = _free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        # the third scrape starts after the first was stored (Prometheus commits, then waits)
        assert server.metrics.wait_for("requests.metrics", 3, HANG_GUARD_S), \
            (tmp_path / "prometheus.log").read_text()
        assert server.metrics.counter("requests.rejected.unauthorized") == 0  # every scrape had the token

        async def query(q):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q}) as r:
                    return json.loads(await r.text())["data"]["result"]

        up = client_loop.run(query('up{job="mirage"}'))
        assert [float(x["value"][1]) for x in up] == [1.0]
        assert up[0]["metric"]["service"] == "mirage-serve"
        assert [float(x["value"][1]) for x in client_loop.run(query("mirage_sessions_max"))] == [3.0]
        names = {x["metric"]["__name__"] for x in client_loop.run(query('{job="mirage",__name__=~"mirage_.*"}'))}
        for name in SERIES:
            if name == "mirage_stage_latency_seconds":
                continue  # no frames went through this server: no stage has a sample yet
            assert name in names, name
    finally:
        proc.terminate()
        proc.wait(HANG_GUARD_S)

