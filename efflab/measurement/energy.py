"""Energy from a real counter, or honestly "unavailable" — never estimated.

Sources, in order: NVML's total-energy counter for a CUDA device (Volta and newer), then
Linux RAPL package counters (``/sys/class/powercap/intel-rapl*``; the whole CPU package, so
other processes count too). Where neither can be read, ``joules`` is None.
"""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def _rapl_zones() -> list[Path]:
    if not POWERCAP.exists():
        return []
    zones = []
    for z in sorted(POWERCAP.glob("intel-rapl:*")):
        if z.name.count(":") == 1 and (z / "energy_uj").exists():  # packages, not sub-zones
            try:
                int((z / "energy_uj").read_text())
                zones.append(z)
            except (OSError, ValueError):
                pass  # present but not readable (often root-only)
    return zones


class EnergyMeter:
    """``start()`` then ``stop()`` -> {"joules": float | None, "source": str}."""

    def __init__(self, device="cpu"):
        self.device = str(device)
        self.source = "unavailable"
        self._nvml = None
        self._zones: list[Path] = []
        if self.device.startswith("cuda"):
            try:
                import pynvml

                pynvml.nvmlInit()
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises if unsupported
                self._nvml = (pynvml, handle)
                self.source = "nvml"
            except Exception:  # no pynvml, no driver, or a GPU without the counter
                self._nvml = None
        if self._nvml is None:
            self._zones = _rapl_zones()
            if self._zones:
                self.source = "rapl"
        self._start: list[int] = []

    def _read(self) -> list[int]:
        if self._nvml is not None:
            pynvml, handle = self._nvml
            return [pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)]  # millijoules
        return [int((z / "energy_uj").read_text()) for z in self._zones]  # microjoules

    def start(self) -> None:
        self._start = self._read() if self.source != "unavailable" else []

    def stop(self) -> dict:
        if self.source == "unavailable":
            return {"joules": None, "source": "unavailable"}
        end = self._read()
        if self._nvml is not None:
            return {"joules": (end[0] - self._start[0]) / 1e3, "source": "nvml"}
        total = 0
        for z, a, b in zip(self._zones, self._start, end):
            if b < a:  # the counter wrapped around
                b += int((z / "max_energy_range_uj").read_text())
            total += b - a
        return {"joules": total / 1e6, "source": "rapl"}
