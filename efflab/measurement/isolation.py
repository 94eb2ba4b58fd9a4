"""One measurement in its own worker process, under a memory limit: an OOM costs a point, not the lab.

A configuration that really exhausts memory can take down the process that runs it (the
notebook's kernel, a sweep that has been running for an hour). ``measure_isolated`` runs
``efflab.measure`` in a fresh ``python -m efflab.measurement.isolation`` process instead:

    parent: request (knobs, preset, options) as JSON  ->  worker: imports efflab, loads the
    corpus, warms up torch's thread pool, then caps its own address space at what it has now
    plus ``memory_limit_bytes`` (``resource.setrlimit(RLIMIT_AS)``), runs ``measure`` and writes
    the record as JSON  ->  parent: reads the record (or learns how the worker died).

What comes back is always a record or an efflab error, never a dead parent:

* the worker's allocation fails (torch's "can't allocate memory", ``MemoryError``) -> ``oom``;
* the worker dies without a record (killed, a crash inside a native library) -> ``oom`` when it
  was killed while a memory limit was set, else ``error``, with the exit status in the message;
* the worker runs past ``timeout_s`` -> it is killed and the record says ``error`` (timed out);
* a bad setting (``ConfigError``, ``CorpusError``, ``WeightsError``) is raised in the parent
  again, exactly as ``measure`` would raise it.

The limit covers what the configuration itself allocates (model, optimizer, activations,
temporaries): the interpreter, torch and the corpus are in place before it is set. Linux
(and other POSIX systems with ``RLIMIT_AS``) only; elsewhere the worker still isolates but
cannot limit, and the record says so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from efflab.core.config import ConfigError, Knobs, check_int
from efflab.core.data import CorpusError
from efflab.core.records import SCHEMA, is_out_of_memory
from efflab.core.weights import WeightsError

MIB = 2**20
# errors a worker raises that mean "this input is wrong", raised again in the parent as such
_INPUT_ERRORS = {"CorpusError": CorpusError, "WeightsError": WeightsError}


def _failed_record(preset: str, knobs: Knobs, budget_bytes, status: str, message: str) -> dict:
    """A record for a configuration whose worker left no record of its own."""
    return {"schema": SCHEMA, "status": status, "message": message, "preset": preset,
            "workload": knobs.workload, "knobs": knobs.to_dict(), "budget_bytes": budget_bytes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def default_memory_limit() -> int:
    """Half of the memory available right now: a runaway configuration never takes the machine."""
    import psutil

    return int(psutil.virtual_memory().available // 2)


def measure_isolated(knobs: Knobs | None = None, preset: str = "cpu-small", *,
                     memory_limit_bytes: int | None = None, timeout_s: float | None = 600.0,
                     weights="auto", corpus: str | None = None, device: str | None = None,
                     budget_bytes: int | None = None, target_s: float = 1.0, memory: bool = True,
                     quality: bool = True, calibration: dict | None = None,
                     quality_windows: int | None = None) -> dict:
    """``efflab.measure`` in a fresh worker process whose address space is capped.

    ``memory_limit_bytes``: how much the configuration may allocate beyond the worker's
    start-up footprint (default: half the memory available now). ``timeout_s``: the worker is
    killed after this many seconds (``None``: no limit). Other arguments as ``efflab.measure``.
    Returns the record; ``record["isolation"]`` says how the worker ran and ended.
    """
    knobs = knobs or Knobs()
    if not isinstance(knobs, Knobs):
        raise ConfigError("knobs", knobs, "an efflab.Knobs instance")
    limit = default_memory_limit() if memory_limit_bytes is None else memory_limit_bytes
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise ConfigError("memory_limit_bytes", memory_limit_bytes,
                          "a positive integer number of bytes, or None for half the free memory")
    if timeout_s is not None and (not isinstance(timeout_s, (int, float)) or timeout_s <= 0):
        raise ConfigError("timeout_s", timeout_s, "a positive number of seconds or None")
    request = {"knobs": knobs.to_dict(), "preset": preset, "memory_limit_bytes": limit,
               "weights": None if weights is None else str(weights), "corpus": corpus,
               "device": device, "budget_bytes": budget_bytes, "target_s": target_s,
               "memory": memory, "quality": quality, "calibration": calibration,
               "quality_windows": check_int("quality_windows", quality_windows, 2, optional=True,
                                            note="None: QUALITY_WINDOWS")}
    with tempfile.TemporaryDirectory(prefix="efflab-worker-") as tmp:
        req_path, out_path = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req_path.write_text(json.dumps(request, default=str))
        env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # fewer reserved arenas under the cap
        proc = subprocess.Popen([sys.executable, "-m", "efflab.measurement.isolation", str(req_path),
                                 str(out_path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it started
            _, err = proc.communicate()
            timed_out = True
        result = json.loads(out_path.read_text()) if out_path.exists() else None
    stderr_tail = (err or b"").decode("utf-8", "replace")[-2000:]
    return _outcome(result, proc.returncode, timed_out, timeout_s, limit, stderr_tail,
                    knobs, preset, budget_bytes)


def _outcome(result: dict | None, returncode: int, timed_out: bool, timeout_s, limit: int,
             stderr_tail: str, knobs: Knobs, preset: str, budget_bytes) -> dict:
    """Turn what the worker left behind into a record (or raise the input error it found)."""
    info = {"worker": "process", "memory_limit_bytes": limit, "returncode": returncode}
    if result is not None and "record" in result:
        rec = result["record"]
        info["limited"] = result.get("limited", False)
        if rec.get("status") == "error" and is_out_of_memory(rec.get("message")):
            rec = {**rec, "status": "oom",
                   "message": f"out of memory under the worker's limit of {limit / MIB:,.0f} MiB: "
                              f"{rec.get('message')}"}
        return {**rec, "isolation": info}
    if result is not None and "exception" in result:
        name, message = result["exception"], result["message"]
        if name == "ConfigError":
            raise ConfigError(*result["args"])
        if name in _INPUT_ERRORS:
            raise _INPUT_ERRORS[name](message)
        status = "oom" if name == "MemoryError" or is_out_of_memory(message) else "error"
        rec = _failed_record(preset, knobs, budget_bytes, status, f"{name}: {message}")
        return {**rec, "traceback": result.get("traceback"), "isolation": info}
    if timed_out:
        return {**_failed_record(preset, knobs, budget_bytes, "error",
                                 f"the worker ran past the timeout of {timeout_s:g} s and was "
                                 "killed"), "isolation": info}
    if returncode < 0:
        try:
            how = f"was killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    else:
        how = f"exited with status {returncode}"
    # a worker killed outright (the kernel's OOM killer, an abort when a native allocation
    # failed) under a memory limit has, as far as anyone can tell, run out of memory
    oom = returncode < 0 or is_out_of_memory(stderr_tail)
    message = (f"the worker {how} without a record"
               + (f" (memory limit {limit / MIB:,.0f} MiB)" if oom else "")
               + (f"; its last words: {stderr_tail.strip()[-300:]}" if stderr_tail.strip() else ""))
    return {**_failed_record(preset, knobs, budget_bytes, "oom" if oom else "error", message),
            "isolation": info}


# ----------------------------------------------------------------------------- the worker

def _address_space() -> int:
    """This process's virtual address space now, in bytes (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_address_space(extra: int) -> bool:
    """Cap this process at its current address space plus ``extra`` bytes; False if it can't."""
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _address_space() + extra
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        return True
    except (ImportError, OSError, ValueError):
        return False


def _worker(request_path: str, result_path: str) -> int:
    """The worker's whole life: read the request, set up, cap memory, measure, write."""
    import traceback

    req = json.loads(Path(request_path).read_text())
    out: dict
    try:
        import torch

        from efflab.core.data import load_corpus
        from efflab.measurement.core import measure

        load_corpus(req["corpus"])  # the data are in place before the cap: it limits the config
        torch.ones(64, 64) @ torch.ones(64, 64)  # start torch's thread pool before the cap too
        limited = _limit_address_space(int(req["memory_limit_bytes"]))
        rec = measure(Knobs().replace(**req["knobs"]), preset=req["preset"],
                      weights=req["weights"],
                      corpus=req["corpus"], device=req["device"],
                      budget_bytes=req["budget_bytes"], target_s=req["target_s"],
                      memory=req["memory"], quality=req["quality"],
                      calibration=req["calibration"],
                      quality_windows=req.get("quality_windows"))
        out = {"record": rec, "limited": limited}
    except ConfigError as e:
        out = {"exception": "ConfigError", "message": str(e),
               "args": [e.field, _jsonable(e.value), e.allowed]}
    except BaseException as e:  # noqa: BLE001  (reported to the parent, whatever it is)
        out = {"exception": type(e).__name__, "message": str(e),
               "traceback": traceback.format_exc(limit=8)}
    text = json.dumps(out, default=str)
    tmp = Path(result_path + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, result_path)  # all or nothing: a half-written result is never read
    return 0


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2]))


__all__ = ["measure_isolated", "is_out_of_memory", "default_memory_limit"]
