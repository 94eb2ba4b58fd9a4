"""make gpu-check: on a CPU it says it needs CUDA and exits 0; its parts run under their own
timeouts and the run goes on past a failing one; its report is one JSON and one HTML page."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gpu_check = _load(ROOT / "scripts" / "gpu_check.py", "gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"),
                          "--results", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "needs a CUDA GPU" in out.stdout and "nothing was run" in out.stdout
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_makefile_target_runs_the_script():
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "scripts/gpu_check.py" in dry.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path of a benchmark part")
def test_a_benchmark_part_without_cuda_records_skipped(tmp_path):
    out = tmp_path / "part.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "oom",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["status"] == "skipped"


def test_a_part_past_its_timeout_is_killed_and_the_next_runs():
    t = gpu_check.run_part("slow", [sys.executable, "-c", "import time; time.sleep(30)"], 1.0)
    assert t["status"] == "timeout" and t["seconds"] < 10
    bad = gpu_check.run_part("bad", [sys.executable, "-c", "raise SystemExit(3)"], 30)
    assert bad["status"] == "failed" and bad["rc"] == 3
    ok = gpu_check.run_part("ok", [sys.executable, "-c", "print('fine')"], 30)
    assert ok["status"] == "ok" and "fine" in ok["tail"]


def test_budget_cuts_timeouts_and_skips_when_spent():
    b = gpu_check.Budget(100)
    assert 90 < b.cut(500) <= 100 and b.cut(30) == 30
    assert gpu_check.Budget(2).cut(30) is None


def test_report_is_one_json_and_one_html_page(tmp_path):
    result = {"device": "NVIDIA H100 80GB HBM3", "budget_s": 540, "seconds": 12.0,
              "finished_at": "2026-12-03T14:00:00", "torch": "x", "efflab": "abc",
              "parts": [{"part": "gpu_tests", "status": "ok", "seconds": 3.0, "tail": ""},
                        {"part": "lesson:01_batching", "status": "failed", "seconds": 4.0,
                         "tail": "Traceback <boom>"}],
              "benchmarks": {"oom": {"rows": [{"batch_size": 4096, "status": "oom"},
                                              {"batch_size": 8, "status": "ok", "latency_ms": 9.5}],
                                     "targets": [{"target": "oom then ok", "value": 1.0,
                                                  "threshold": 1.0, "met": True}]}}}
    result["summary"] = gpu_check.summary(result)
    assert result["summary"]["parts"] == {"ok": 1, "failed": 1}
    assert result["summary"]["targets_met"] == 1
    js, page = gpu_check.write_report(result, tmp_path)
    assert js.name == "nvidia-h100-80gb-hbm3.json" and page.suffix == ".html"
    assert json.loads(js.read_text())["parts"][1]["status"] == "failed"
    text = page.read_text()
    assert "&lt;boom&gt;" in text and "<boom>" not in text  # output escaped
    assert "9.5" in text and "oom then ok" in text


def test_attention_flops_follow_triton_tutorial():
    bench = _load(ROOT / "benchmarks" / "gpu_bench.py", "gpu_bench")
    fwd = bench.attention_flops(1, 1, 1024, 64, "fwd")
    assert fwd == 4 * 1024 * 1024 * 64 * 0.5
    assert bench.attention_flops(1, 1, 1024, 64, "fwd_bwd") == 3.5 * fwd


@pytest.mark.gpu
def test_flash_part_runs_on_cuda(tmp_path):
    bench = _load(ROOT / "benchmarks" / "gpu_bench.py", "gpu_bench")
    bench.FLASH_T = (1024,)
    out = bench.bench_flash()
    assert {r["status"] for r in out["rows"]} == {"ok"}
    assert "fwd@1024" in out["ratios_triton_over_sdpa"]


def test_run_all_runs_every_part_in_order_past_failures(monkeypatch, tmp_path):
    calls = []

    def fake(name, cmd, timeout_s, env=None):
        calls.append(name)
        status = "failed" if name in ("gpu_tests", "bench:flash") else "ok"
        return {"part": name, "status": status, "rc": 0 if status == "ok" else 1,
                "seconds": 0.0, "tail": ""}

    monkeypatch.setattr(gpu_check, "run_part", fake)
    result = gpu_check.run_all(600, 60, 2, tmp_path)
    names = [p["part"] for p in result["parts"]]
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(lessons) >= 17
    assert names[:3] == ["calibrate", "gpu_tests", "checkpoint"]
    assert names[3:3 + len(gpu_check.BENCH_PARTS)] == [f"bench:{b}" for b in gpu_check.BENCH_PARTS]
    assert names[3 + len(gpu_check.BENCH_PARTS):] == [f"lesson:{s}" for s in lessons]
    assert sorted(calls) == sorted(names)  # every part ran, the failing ones too


def test_run_all_skips_what_the_budget_cannot_hold(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "run_part", lambda name, *a, **k: pytest.fail(name))
    result = gpu_check.run_all(1, 60, 2, tmp_path)
    assert {p["status"] for p in result["parts"]} == {"skipped"}


def test_run_all_runs_only_the_parts_asked_for(monkeypatch, tmp_path):
    calls = []

    def fake(name, cmd, timeout_s, env=None):
        calls.append(name)
        return {"part": name, "status": "ok", "rc": 0, "seconds": 0.0, "tail": ""}

    monkeypatch.setattr(gpu_check, "run_part", fake)
    result = gpu_check.run_all(600, 60, 2, tmp_path, ("checkpoint", "lessons"))
    names = [p["part"] for p in result["parts"]]
    assert names[0] == "checkpoint" and names[1:] and all(n.startswith("lesson:") for n in names[1:])
    assert sorted(calls) == sorted(names) and result["benchmarks"] == {}
    only_bench = gpu_check.run_all(600, 60, 2, tmp_path, ("bench",))
    assert [p["part"] for p in only_bench["parts"]] == [f"bench:{b}" for b in gpu_check.BENCH_PARTS]
    with pytest.raises(ValueError, match="each must be one of calibrate"):
        gpu_check.run_all(600, 60, 2, tmp_path, ("lessons", "warmup"))


def test_a_bad_parts_list_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--parts", "lessons,warmup"])
    assert e.value.code == 2 and "each must be one of calibrate" in capsys.readouterr().err


def test_a_partial_run_writes_its_own_report(tmp_path):
    result = {"device": "NVIDIA H200", "budget_s": 540, "seconds": 1.0, "finished_at": "t",
              "parts_wanted": ["checkpoint", "lessons"], "parts": [], "benchmarks": {}}
    result["summary"] = gpu_check.summary(result)
    js, _ = gpu_check.write_report(result, tmp_path)
    assert js.name == "nvidia-h200-checkpoint-lessons.json"
    full = {**result, "parts_wanted": list(gpu_check.PARTS)}
    assert gpu_check.write_report(full, tmp_path)[0].name == "nvidia-h200.json"
