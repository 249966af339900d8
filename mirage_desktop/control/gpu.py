"""GPU memory in the metrics while a CUDA/TensorRT provider is in use (polled off the hot path)."""

from __future__ import annotations

import subprocess
import threading

from ..metrics import Metrics


def query_gpu_memory() -> tuple[float, float] | None:
    """(used MB, total MB) of GPU 0, from NVML if installed, else nvidia-smi; None if neither works."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        return info.used / 2**20, info.total / 2**20
    except Exception:
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits",
                            "-i", "0"], capture_output=True, text=True, timeout=3)
        used, total = (float(x) for x in r.stdout.strip().split(","))
        return used, total
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


class GpuMemoryMonitor:
    def __init__(self, metrics: Metrics, period_s: float = 2.0):
        self.metrics, self.period = metrics, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mirage-gpu-memory", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            mem = query_gpu_memory()
            if mem is None:
                self.metrics.set_gauge("gpu.memory", "unavailable")
                return
            self.metrics.set_gauge("gpu.memory_used_mb", round(mem[0]))
            self.metrics.set_gauge("gpu.memory_total_mb", round(mem[1]))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
