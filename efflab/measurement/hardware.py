"""This machine: what it is (fingerprint), which device to use, and how fast it really is.

``calibrate()`` measures peak matmul FLOP/s per dtype and copy bandwidth with microbenchmarks
and caches the result per machine fingerprint, so MFU is always against the peak measured on the
machine at hand — never against a vendor table. A dtype whose matmul is pathologically slow here
(fp16 on most CPUs) is measured on a small size so calibration cannot hang.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from efflab.core.config import ConfigError, ModelConfig
from efflab.kernels import flash_attention as fa

CACHE_DIR = Path(os.environ.get("EFFLAB_CACHE", Path.home() / ".cache" / "efflab"))
CALIBRATION_SCHEMA = "efflab.calibration/2"


class RefusedError(RuntimeError):
    """A configuration this machine should not run (too large, pathologically slow)."""


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def efflab_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:  # not installed, or broken on this platform
        return None


def load_average() -> list[float] | None:
    """The host's 1-, 5- and 15-minute load averages (runnable processes, rounded to 0.01), or
    None where the OS keeps none. A load above the CPUs this process may use means another job
    shared the machine while something was timed."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(v, 2) for v in os.getloadavg()]


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host must not start 64 threads)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    for path, parse in (("/sys/fs/cgroup/cpu.max", _quota_v2), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", _quota_v1)):
        try:
            quota = parse(Path(path))
        except (OSError, ValueError):
            continue
        if quota:
            n = min(n, max(1, int(quota + 0.5)))
            break
    return max(1, n)


def _quota_v2(path: Path) -> float | None:
    limit, period = path.read_text().split()[:2]
    return None if limit == "max" else int(limit) / int(period)


def _quota_v1(path: Path) -> float | None:
    limit = int(path.read_text())
    period = int((path.parent / "cpu.cfs_period_us").read_text())
    return None if limit <= 0 else limit / period


def default_threads(threads: int | None) -> int:
    """The thread count a run uses: the knob when set, else every CPU this process may use."""
    return threads if threads is not None else available_cpus()


def gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def environment(device: str | torch.device = "cpu") -> dict:
    """What a record was measured on: CPU, threads, GPU, library versions, efflab commit."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "available_cpus": available_cpus(),
        "threads": torch.get_num_threads(),
        "loadavg_1min": (load_average() or [None])[0],
        "device": str(device),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "efflab": efflab_commit(),
    }


def fingerprint(threads: int | None = None) -> str:
    """A short id of (CPU, GPU, threads, torch): calibrations are cached under it."""
    key = json.dumps([cpu_name(), gpu_name(), threads or torch.get_num_threads(), torch.__version__])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def pick_device(cfg: ModelConfig, device: str | None = None) -> str:
    """CUDA when present, else CPU; a preset that needs a GPU is refused on a CPU-only machine."""
    if device is not None and device not in ("cpu", "cuda"):
        raise ConfigError("device", device, "'cpu', 'cuda' or None (automatic)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RefusedError("device='cuda' was asked for, but this machine has no CUDA GPU")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.needs_gpu and dev == "cpu":
        raise RefusedError(
            f"preset {cfg.name!r} ({cfg.n_params() / 1e6:.0f}M parameters) needs a GPU; this "
            "machine has none. Use 'cpu-tiny', 'cpu-small' or 'cpu-medium' here.")
    return dev


def synchronize(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _seconds(fn, device, repeats: int, budget_s: float, best: bool = False) -> float:
    """Median (or, for a peak, the fastest) seconds of ``fn`` over up to ``repeats`` calls."""
    fn()  # warm-up
    synchronize(device)
    times = []
    t_end = time.perf_counter() + budget_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    times.sort()
    return times[0] if best else times[len(times) // 2]


def matmul_flops(n: int, dtype: torch.dtype, device="cpu", repeats: int = 7,
                 budget_s: float = 3.0) -> float:
    """Peak FLOP/s of an (n x n) @ (n x n) matmul: 2n³ operations over the fastest of the
    repeats — a peak is what the machine reaches when nothing else interferes."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sec = _seconds(lambda: a @ b, device, repeats, budget_s, best=True)
    return 2 * n**3 / sec


def copy_bandwidth(nbytes: int = 256 << 20, device="cpu", repeats: int = 5) -> float:
    """Bytes/s of a large copy (each byte read once and written once: 2·nbytes moved)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    sec = _seconds(lambda: dst.copy_(src), device, repeats, budget_s=5.0)
    return 2 * nbytes / sec


def _climb(dtype: torch.dtype, ladder: list[int], device, step_budget_s: float = 0.5) -> dict:
    """Best FLOP/s over growing square sizes, never starting a size predicted to take longer
    than ``step_budget_s`` per product — so a dtype this hardware runs pathologically slowly
    (fp16 or bf16 without native support: well under 1 GFLOP/s) cannot hang calibration."""
    best, sizes = 0.0, []
    for n in ladder:
        if best and 2 * n**3 / best > step_budget_s:
            break
        best = max(best, matmul_flops(n, dtype, device, budget_s=2.0))
        sizes.append(n)
    return {"flops_per_s": best, "sizes": sizes}


def read_bandwidth(nbytes: int = 256 << 20, device="cpu", repeats: int = 5) -> float:
    """Bytes/s of reading a large buffer once (a sum: every byte read, almost nothing written) —
    what bounds decoding, which streams the weights in and writes little."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    sec = _seconds(lambda: src.sum(), device, repeats, budget_s=5.0)
    return nbytes / sec


def calibrate(device: str | None = None, force: bool = False, quick: bool = False,
              cache_dir: Path | None = None) -> dict:
    """Peak matmul FLOP/s per dtype and memory bandwidth of this machine (cached per machine).

    The peak of a dtype is the best of a few square sizes, so it is what this machine can
    actually reach. ``quick`` uses smaller sizes and stops slow formats sooner (for smoke runs
    and tests): a lower, rougher peak, cached apart from the full calibration.
    """
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = "quick" if quick else "full"
    cache = (cache_dir or CACHE_DIR) / f"calibration-{kind}-{dev}-{fingerprint()}.json"
    if not force and cache.exists():
        try:
            cal = json.loads(cache.read_text())
            if cal.get("schema") == CALIBRATION_SCHEMA:
                return cal
        except (OSError, json.JSONDecodeError):
            pass  # a damaged cache is measured again
    if dev == "cpu":
        ladder, bw_bytes = [256, 512, 1024, 2048], 256 << 20
    else:
        ladder, bw_bytes = [1024, 2048, 4096, 8192], 1 << 30
    if quick:
        ladder, bw_bytes = ladder[:2], 16 << 20
    peaks = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        peaks[str(dt).removeprefix("torch.")] = _climb(dt, ladder, dev,
                                                       step_budget_s=0.05 if quick else 0.5)
    cal = {
        "schema": CALIBRATION_SCHEMA,
        "device": dev,
        "fingerprint": fingerprint(),
        "threads": torch.get_num_threads(),
        "matmul": peaks,
        "bandwidth_bytes_per_s": copy_bandwidth(bw_bytes, dev),
        "read_bandwidth_bytes_per_s": read_bandwidth(bw_bytes, dev),
        "quick": quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "env": environment(dev),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(cal, indent=1))
    return cal


def peak_flops(cal: dict, dtype: str = "float32") -> float:
    return cal["matmul"][dtype]["flops_per_s"]


@functools.lru_cache(maxsize=1)
def interpreter_seconds_per_program() -> float | None:
    """Seconds Triton's interpreter takes per kernel program (one attention tile) on this
    machine, timed on a one-tile forward call (median of 3); None when kernels are compiled
    (or triton is missing). What refuses an interpreted step that would take too long."""
    if not (fa.TRITON_AVAILABLE and fa.INTERPRETED):
        return None
    q = torch.randn(1, 1, 64, 16)  # (B, nh, T, hs): one causal tile -> one program
    fa.flash_attention(q, q, q)  # the first call pays for setting the interpreter up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fa.flash_attention(q, q, q)
        times.append(time.perf_counter() - t0)
    return sorted(times)[1]
