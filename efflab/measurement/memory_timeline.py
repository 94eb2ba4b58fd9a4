"""Memory through one training step: by category, through forward, backward and the optimizer.

The tracker is :class:`efflab.measurement.memory.MemoryTracker` (a dispatch mode that sees
every allocation and every tensor autograd saves); :class:`PhaseTracker` only adds marks
between the phases. Replaying its allocation/free events gives live bytes per category at
every event:

- forward: activations pile up (each block saves ≈ 17·B·T·C values for backward);
- backward: gradients appear as activations are consumed and freed;
- optimizer: AdamW reads every gradient and its two moments, then the gradients are dropped.

What to look for: parameters and optimizer state are flat (they live across steps); the peak
is either the end of forward (activations) or during backward (activations not yet freed +
gradients), and :func:`efflab.measurement.memory.predict_for` says which and how high.

On CUDA, :func:`cuda_memory_snapshot` also records PyTorch's own allocator history, a pickle
to drop on https://pytorch.org/memory_viz. Tracking slows a step: never time a tracked step.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from efflab.core.config import Knobs, get_preset
from efflab.core.data import load_corpus
from efflab.core.weights import load_model
from efflab.measurement.hardware import pick_device
from efflab.measurement.memory import CATEGORIES, MemoryTracker, predict_for
from efflab.measurement.workloads import prepare
from efflab.techniques import apply_techniques, auxiliary_loss

PHASES = ("start", "forward", "backward", "optimizer")


class PhaseTracker(MemoryTracker):
    """A :class:`MemoryTracker` that remembers where each phase of a step began."""

    def __init__(self):
        super().__init__()
        self.marks: list[tuple[int, str]] = [(0, "start")]

    def mark(self, phase: str) -> None:
        """Everything allocated or freed from now on belongs to ``phase``."""
        self.marks.append((len(self._events), phase))

    def replay(self, max_points: int = 600) -> pd.DataFrame:
        """Live bytes per category after each event (thinned to about ``max_points`` events,
        always keeping each phase's first event and the peak): a long frame with columns
        event, phase, category, bytes. Call :meth:`report` first, so storages carry their
        final category."""
        events = self._events[: getattr(self, "_n_events", len(self._events))]
        starts = [i for i, _ in self.marks]
        now = dict.fromkeys(CATEGORIES, 0)
        snaps: list[tuple[int, dict, int]] = []
        live: set[int] = set()
        total = peak = peak_at = 0
        for i, (aid, nbytes) in enumerate(events):
            if aid > 0:
                live.add(aid)
                now[self._category.get(aid, "other")] += nbytes
                total += nbytes
            elif -aid in live:
                live.discard(-aid)
                now[self._category.get(-aid, "other")] -= self._bytes[-aid]
                total -= self._bytes[-aid]
            if total > peak:
                peak, peak_at = total, i
            snaps.append((i, dict(now), total))
        stride = max(1, len(snaps) // max_points)
        keep = set(range(0, len(snaps), stride)) | {peak_at, len(snaps) - 1}
        keep |= {min(s, len(snaps) - 1) for s in starts if snaps}
        # the registrations of what already existed (weights, optimizer state) are not part of
        # the step: the timeline starts from their sum, one point before forward
        first = starts[1] - 1 if len(starts) > 1 else 0
        keep = {j for j in keep if j >= first}
        rows = []
        for i, cats, _ in (snaps[j] for j in sorted(keep)):
            phase = PHASES[0]
            for s, name in self.marks:
                if i >= s:
                    phase = name
            rows.extend({"event": i, "phase": phase, "category": c, "bytes": cats[c]}
                        for c in CATEGORIES)
        self.peak_event = peak_at
        return pd.DataFrame(rows)


@dataclass
class MemoryTimeline:
    """One step's memory: ``frame`` (event, phase, category, bytes), the phases' first events,
    the measured peak and its split, and the formula's prediction beside it."""

    frame: pd.DataFrame
    phase_starts: dict[str, int]
    peak_bytes: int
    peak_event: int
    by_category: dict[str, int]  # alive at the peak moment (sums to peak_bytes)
    max_by_category: dict[str, int]  # each category's own high-water mark
    predicted: dict = field(default_factory=dict)  # predict_for: peak_bytes, by_category
    snapshot: Path | None = None  # CUDA allocator history, when recorded

    def comparison(self) -> pd.DataFrame:
        """Measured vs predicted bytes per category (each category's high-water mark)."""
        pred = self.predicted.get("by_category", {})
        rows = [{"category": c, "measured_bytes": self.max_by_category.get(c, 0),
                 "predicted_bytes": pred.get(c, 0)} for c in CATEGORIES]
        rows.append({"category": "peak", "measured_bytes": self.peak_bytes,
                     "predicted_bytes": self.predicted.get("peak_bytes")})
        df = pd.DataFrame(rows)
        df["ratio"] = df["measured_bytes"] / df["predicted_bytes"].where(df["predicted_bytes"] > 0)
        return df


def train_step_timeline(model, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                        y: torch.Tensor, max_points: int = 600) -> MemoryTimeline:
    """Track one training step of ``model`` on (x, y), phase by phase.

    The optimizer should already hold its state (run one step first), as in steady training.
    """
    mt = PhaseTracker()
    mt.track_existing(list(model.parameters()) + list(model.buffers()), "parameters")
    mt.track_existing([v for s in optimizer.state.values() for v in s.values()
                       if isinstance(v, torch.Tensor) and v.numel() > 1], "optimizer")
    mt.track_existing([x, y], "other")
    hooks = [p.register_post_accumulate_grad_hook(lambda p: mt._tag(p.grad, "gradients"))
             for p in model.parameters() if p.requires_grad]
    try:
        with mt:
            mt.mark("forward")
            _, loss = model(x, y)
            aux = auxiliary_loss(model)
            if aux is not None:
                loss = loss + aux
            mt.mark("backward")
            loss.backward()
            mt.mark("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        for h in hooks:
            h.remove()
    rep = mt.report(model, optimizer)
    frame = mt.replay(max_points)
    return MemoryTimeline(frame=frame, phase_starts={p: i for i, p in mt.marks},
                          peak_bytes=rep["peak_bytes"], peak_event=mt.peak_event,
                          by_category=rep["by_category"], max_by_category=rep["max_by_category"])


def memory_timeline(preset: str = "cpu-small", knobs: Knobs | None = None, *,
                    weights="auto", corpus: str | None = None, device: str | None = None,
                    snapshot_path: str | Path | None = None) -> MemoryTimeline:
    """The memory timeline of one training step of the preset's model for ``knobs`` (built as
    ``measure`` builds it), with ``predict_for``'s breakdown beside it. On CUDA with
    ``snapshot_path``, also PyTorch's allocator snapshot of the same step."""
    knobs = (knobs or Knobs()).replace(workload="train")
    cfg = get_preset(preset)
    dev = pick_device(cfg, device)
    model = apply_techniques(load_model(preset, weights, knobs.seed, dev), knobs)
    prep = prepare("train", model, load_corpus(corpus), knobs, dev)
    prep.step()  # steady state: AdamW's moments exist before the tracked step
    x, y = prep.inputs
    tl = train_step_timeline(model, prep.optimizer, x, y)
    tl.predicted = predict_for(cfg, knobs)
    if snapshot_path is not None and dev == "cuda":
        tl.snapshot = cuda_memory_snapshot(prep.step, snapshot_path)
    return tl


def cuda_memory_snapshot(step, path: str | Path, max_entries: int = 200_000) -> Path:
    """Run ``step()`` once with PyTorch's CUDA allocator history on; write the snapshot pickle
    to ``path`` (open it at https://pytorch.org/memory_viz). CUDA only."""
    if not torch.cuda.is_available():
        raise RuntimeError("a CUDA memory snapshot needs a CUDA device; this machine has none")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        step()
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    with open(path, "wb") as f:
        pickle.dump(snap, f)
    return path


__all__ = ["PHASES", "PhaseTracker", "MemoryTimeline", "train_step_timeline", "memory_timeline",
           "cuda_memory_snapshot"]
