"""/metrics in the Prometheus text format (prometheus_client), built at scrape time from the
engine's own metrics: per-stage latency summaries with 0.5/0.95/0.99 quantiles, frames in/out
and dropped by reason, the A/V offset, sessions, GPU memory.

The series (all prefixed ``mirage_``):

=====================================  =======  ==========================================
stage_latency_seconds{stage,quantile}  summary  per pipeline stage (detect, swap, total, ...)
frames_in_total / frames_out_total     counter  frames into / out of the engines
frames_dropped_total{reason}           counter  dropped frames by reason (worker_busy, ...)
frames_rejected_total{reason}          counter  frames refused by the guard (oversize, ...)
control_rejected_total{reason}         counter  control messages refused (oversize, rate)
requests_rejected_total{reason}        counter  HTTP requests refused (unauthorized, rate)
av_offset_seconds                      gauge    video minus voice latency (P50), 0 without voice
sessions                               gauge    open sessions
sessions_max                           gauge    the session cap
sessions_closed_total{reason}          counter  closed sessions by kind of reason
gpu_memory_used_bytes                  gauge    GPU memory in use (NaN without a GPU monitor)
voice_latency_seconds{session,q..}     summary  per session with a voice: arrival -> hand-over
voice_converter_seconds{session,q..}   summary  per session: processing time of a converted block
=====================================  =======  ==========================================
"""

from __future__ import annotations

import math

QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))
SERIES = ("mirage_stage_latency_seconds", "mirage_frames_in_total", "mirage_frames_out_total",
          "mirage_frames_dropped_total", "mirage_frames_rejected_total", "mirage_control_rejected_total",
          "mirage_requests_rejected_total", "mirage_av_offset_seconds", "mirage_sessions", "mirage_sessions_max",
          "mirage_sessions_closed_total", "mirage_gpu_memory_used_bytes")
# per session, present while a session with a microphone is open (no sample, no series: Prometheus
# stores none before the first voice session)
SESSION_SERIES = ("mirage_voice_latency_seconds", "mirage_voice_converter_seconds")


# the reasons each labelled counter always shows (at 0 until it happens), so a rate() or an alert
# on one of them works from the first scrape
KNOWN_REASONS = {
    "dropped.": ("worker_busy", "output_busy", "av_late", "adapt_fps", "network_ahead"),
    "frames.rejected.": ("oversize", "malformed", "empty"),
    "control.rejected.": ("oversize", "unknown"),
    "requests.rejected.": ("unauthorized", "rate_limited", "bad_request", "no_consent", "full", "cross_origin"),
    "sessions.closed.": ("client", "idle", "anomaly", "max_length", "error", "shutdown", "other"),
}


def _by_prefix(counters: dict, prefix: str) -> dict[str, int]:
    found = {k: 0 for k in KNOWN_REASONS.get(prefix, ())}
    found.update({k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)})
    return found


class SnapshotCollector:
    """A prometheus_client collector over ``provider()`` -> a merged view:
    ``{"stages": {name: [values ms]} , "totals": {name: (count, sum_ms)}, "counters", "gauges",
    "sessions", "sessions_max"}``."""

    def __init__(self, provider):
        self.provider = provider

    def collect(self):
        import numpy as np
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

        v = self.provider()
        lat = Metric("mirage_stage_latency_seconds", "Per-stage latency of the video pipeline", "summary")
        for stage, values in sorted(v["stages"].items()):
            count, total = v["totals"].get(stage, (len(values), float(sum(values))))
            if len(values):
                qs = np.percentile(np.asarray(values, float), [q * 100 for q, _ in QUANTILES])
                for (q, _), x in zip(QUANTILES, qs):
                    lat.add_sample("mirage_stage_latency_seconds", {"stage": stage, "quantile": str(q)}, x / 1000.0)
            lat.add_sample("mirage_stage_latency_seconds_count", {"stage": stage}, count)
            lat.add_sample("mirage_stage_latency_seconds_sum", {"stage": stage}, total / 1000.0)
        yield lat
        c = v["counters"]
        yield CounterMetricFamily("mirage_frames_in", "Frames into the engines", value=c.get("frames.in", 0))
        yield CounterMetricFamily("mirage_frames_out", "Frames out of the engines", value=c.get("frames.out", 0))
        for name, prefix, help_text in (
                ("mirage_frames_dropped", "dropped.", "Frames dropped, by reason"),
                ("mirage_frames_rejected", "frames.rejected.", "Frames refused by the frame guard, by reason"),
                ("mirage_control_rejected", "control.rejected.", "Control messages refused, by reason"),
                ("mirage_requests_rejected", "requests.rejected.", "HTTP requests refused, by reason"),
                ("mirage_sessions_closed", "sessions.closed.", "Sessions closed, by kind of reason")):
            fam = CounterMetricFamily(name, help_text, labels=["reason"])
            for reason, n in sorted(_by_prefix(c, prefix).items()):
                fam.add_metric([reason], n)
            if name == "mirage_control_rejected":
                fam.add_metric(["rate"], c.get("control.rate_limited", 0))
            yield fam
        g = v["gauges"]
        off = g.get("av.offset_ms")
        yield GaugeMetricFamily("mirage_av_offset_seconds", "Video minus voice latency (P50); 0 without a voice path",
                                value=(off / 1000.0) if isinstance(off, (int, float)) else 0.0)
        yield GaugeMetricFamily("mirage_sessions", "Open sessions", value=v.get("sessions", 0))
        yield GaugeMetricFamily("mirage_sessions_max", "The session cap", value=v.get("sessions_max", 0))
        for key, name, help_text in (
                ("latency", "mirage_voice_latency_seconds",
                 "Per session: voice arrival -> hand-over of the converted (or passed-through) voice"),
                ("converter", "mirage_voice_converter_seconds",
                 "Per session: processing time of a block that went through the voice converter")):
            fam = Metric(name, help_text, "summary")
            for sid, hists in sorted(v.get("voice", {}).items()):
                values, count, total = hists[key]
                if values:
                    qs = np.percentile(np.asarray(values, float), [q * 100 for q, _ in QUANTILES])
                    for (q, _), x in zip(QUANTILES, qs):
                        fam.add_sample(name, {"session": sid, "quantile": str(q)}, x / 1000.0)
                fam.add_sample(name + "_count", {"session": sid}, count)
                fam.add_sample(name + "_sum", {"session": sid}, total / 1000.0)
            yield fam
        mem = g.get("gpu.memory_used_mb")
        yield GaugeMetricFamily("mirage_gpu_memory_used_bytes", "GPU memory in use (NaN: no GPU monitor)",
                                value=float(mem) * 2 ** 20 if isinstance(mem, (int, float)) else math.nan)


def merged_view(metrics_list, extra_counters: dict | None = None, sessions: int = 0, sessions_max: int = 0) -> dict:
    """Merge several engines' Metrics (and counters of closed sessions) into one view."""
    stages: dict[str, list] = {}
    totals: dict[str, tuple[int, float]] = {}
    counters: dict[str, int] = dict(extra_counters or {})
    gauges: dict = {}
    offsets = []
    for m in metrics_list:
        snap = m.snapshot()
        for k, n in snap["counters"].items():
            counters[k] = counters.get(k, 0) + n
        for name in snap["stages"]:
            h = m.histogram(name)
            stages.setdefault(name, []).extend(h.values().tolist())
            c0, s0 = totals.get(name, (0, 0.0))
            totals[name] = (c0 + h.count, s0 + h.total)
        for k, val in snap["gauges"].items():
            gauges.setdefault(k, val)
        off = snap["stages"].get("av.offset_ms", {}).get("p50")
        if off is not None:
            offsets.append(off)
    if offsets:
        gauges["av.offset_ms"] = sum(offsets) / len(offsets)
    return {"stages": stages, "totals": totals, "counters": counters, "gauges": gauges,
            "sessions": sessions, "sessions_max": sessions_max}


def render(provider) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(provider))
    return generate_latest(reg)
