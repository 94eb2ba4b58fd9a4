"""Scaling laws from an IsoFLOP sweep a learner can run: how big should a model be for a budget?

Training compute is, to a good approximation, ``C = 6 · N · D`` FLOPs (``estimate_6n``):
each of the ``N`` weights a token's matmuls touch costs 2 FLOPs forward and 4 backward, for each
of ``D`` tokens. For a fixed budget C, a bigger model sees fewer tokens. An **IsoFLOP** sweep
(Hoffmann et al. 2022, "Chinchilla", approach 2) trains models of several sizes to *exactly*
the same C and measures each one's held-out loss:

1. per budget, loss against log N is close to a parabola; its vertex is the compute-optimal
   size N_opt(C) (:func:`fit_parabola`) — *if* the vertex lies inside the sizes tried;
2. through the vertices, a power law ``N_opt = k · C^a`` (:func:`fit_power_law`); because
   ``D = C / 6N``, the tokens follow ``D_opt ∝ C^b`` with ``b = 1 - a`` exactly;
3. Chinchilla measured a ≈ 0.50 (b ≈ 0.50: about 20 tokens per parameter); Kaplan et al. 2020
   measured a ≈ 0.73 (b ≈ 0.27) — they are drawn beside the learner's fit
   (:data:`PUBLISHED`).

What ``N`` counts here (``compute_params``, owned by ``efflab.measurement.flops`` with the 6N
estimate itself): every parameter of the blocks and the output head (tied to the token table,
so the head's vocab × width weights count once). The position table and token lookup are reads,
not matmuls, and are left out.
Attention's score FLOPs (``~6 · L · T · d`` per token fwd+bwd with the causal half) are also
left out of 6N, as in both papers; :func:`attention_share` says how much that leaves out — at
context 64 it is 11-17% for the smallest shapes here, so every budget is ~15% more real work
than its name, much the same across one budget's sizes.

Each run's held-out loss is measured on the same fixed windows of the validation split for
every model (paired), and its per-batch losses are kept. Intervals come from a paired bootstrap
over those batches (:func:`scaling_fit`): they cover the evaluation's sampling noise, not the
run-to-run noise of training with another seed — say so wherever they are shown.

Runs are committed to a :class:`~efflab.core.store.Store` as each one finishes, keyed by what
was asked for (budget, shape, recipe, corpus), so ``efflab scaling`` killed half-way resumes
where it stopped. The sweep shipped with efflab lives in ``data/scaling/isoflop.json``
(:func:`load_shipped`) so a notebook draws it at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from efflab.core.config import ConfigError, ModelConfig
from efflab.core.data import fixed_batches, load_corpus
from efflab.core.model import build_model
from efflab.core.store import Store, default_results_dir
from efflab.measurement.flops import attention_flops, compute_params, estimate_6n
from efflab.measurement.hardware import environment, load_average
from efflab.measurement.training import run_training
from efflab.measurement.workloads import LN2

SCHEMA = "efflab.scaling/1"
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "scaling" / "isoflop.json"

# (n_layer, n_embd): a ladder of shapes whose compute parameters grow ~1.5x per rung
LADDER: tuple[tuple[int, int], ...] = (
    (1, 8), (1, 12), (1, 16), (1, 24), (2, 24), (2, 32), (2, 40), (2, 48), (3, 48), (3, 64),
    (4, 64), (4, 80),
)

PUBLISHED = {
    "Chinchilla": {"a": 0.50, "b": 0.50,
                   "source": "Hoffmann et al. 2022, approach 1 (approach 2: a=0.49, b=0.51; "
                             "approach 3: a=0.46, b=0.54)"},
    "Kaplan": {"a": 0.73, "b": 0.27,
               "source": "Kaplan et al. 2020, N_opt ∝ C^0.73 (non-embedding parameters)"},
}


# ----------------------------------------------------------------------------- formulas

def size_config(n_layer: int, n_embd: int, block_size: int = 64) -> ModelConfig:
    """The GPT shape of one rung: heads of width 16 (one head below width 32)."""
    n_head = max(1, n_embd // 16)
    while n_embd % n_head:
        n_head -= 1
    return ModelConfig(f"L{n_layer}-d{n_embd}", n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                       block_size=block_size)


def tokens_for_budget(budget: float, n_params: float) -> float:
    """D = C / 6N: how many tokens a model of N parameters may see on a budget of C FLOPs."""
    return budget / (6.0 * n_params)


def attention_share(cfg: ModelConfig, seq_len: int) -> float:
    """Attention-score FLOPs (QKᵀ and AV, fwd+bwd ≈ 6·2·L·T·d per token at full context,
    halved by the causal mask) as a fraction of 6N: what the 6N rule leaves out."""
    attn = attention_flops(cfg, 1, seq_len, seq_len, backward=True) // (2 * seq_len)  # per token
    return attn / estimate_6n(cfg, 1)


def chinchilla_optimum(budget: float, tokens_per_param: float = 20.0) -> tuple[float, float]:
    """The rule of thumb: D = 20·N, so C = 6·N·20N gives N = √(C/120), D = 20·N."""
    n = math.sqrt(budget / (6.0 * tokens_per_param))
    return n, tokens_per_param * n


# ----------------------------------------------------------------------------- the sweep

@dataclass(frozen=True)
class ScalingSpec:
    """An IsoFLOP sweep, declared: the budgets, the ladder of shapes, and one training recipe.

    Every budget trains each shape whose tokens-per-parameter ratio D/N = C/(6N²) falls in
    [``min_tokens_per_param``, ``max_tokens_per_param``] (too few tokens: a few steps of a big
    model; too many: hours for a tiny one). Each run: AdamW at ``lr``, warm-up over 5% of the
    steps, cosine decay to 10% at exactly the last step, batches of ``batch_size`` ×
    ``seq_len`` bytes; held-out loss over ``eval_batches`` × ``eval_batch_size`` fixed windows.
    """

    budgets: tuple[float, ...] = (1e10, 3e10, 1e11)
    sizes: tuple[tuple[int, int], ...] = LADDER
    min_tokens_per_param: float = 2.0
    max_tokens_per_param: float = 700.0
    batch_size: int = 8
    seq_len: int = 64
    lr: float = 3e-3
    eval_batches: int = 32
    eval_batch_size: int = 8
    seed: int = 0
    corpus: str | None = None

    def __post_init__(self):
        budgets = tuple(self.budgets)
        if not budgets or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                  and 0 < b < 1e30 for b in budgets):
            raise ConfigError("budgets", self.budgets, "a non-empty list of FLOP counts > 0")
        if len(set(budgets)) != len(budgets):
            raise ConfigError("budgets", self.budgets, "distinct budgets")
        object.__setattr__(self, "budgets", tuple(float(b) for b in budgets))
        sizes = tuple(tuple(s) for s in self.sizes)
        if not sizes or not all(len(s) == 2 and all(isinstance(v, int) and v >= 1 for v in s)
                                for s in sizes):
            raise ConfigError("sizes", self.sizes, "a non-empty list of (n_layer, n_embd) pairs")
        object.__setattr__(self, "sizes", sizes)
        if not 0 < self.min_tokens_per_param < self.max_tokens_per_param:
            raise ConfigError("min_tokens_per_param", self.min_tokens_per_param,
                              f"a number in (0, max_tokens_per_param={self.max_tokens_per_param})")
        for name, lo in (("batch_size", 1), ("seq_len", 2), ("eval_batches", 2),
                         ("eval_batch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(name, v, f"an integer >= {lo}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr <= 1:
            raise ConfigError("lr", self.lr, "a number in (0, 1]")

    def recipe(self) -> dict:
        """What, besides budget and shape, decides a run's loss (part of every run's key)."""
        return {"batch_size": self.batch_size, "seq_len": self.seq_len, "lr": self.lr,
                "eval_batches": self.eval_batches, "eval_batch_size": self.eval_batch_size,
                "seed": self.seed, "corpus": self.corpus}

    def plan(self) -> list[dict]:
        """Every run of the sweep, smallest budget first: budget, shape, N, steps, tokens, FLOPs.

        Steps = round(C / (6·N·B·T)), so each run's FLOPs match its budget to within half a
        step (``flops / budget`` is kept in the plan; it is within a few percent).
        """
        runs = []
        tokens_per_step = self.batch_size * self.seq_len
        for budget in sorted(self.budgets):
            for n_layer, n_embd in self.sizes:
                cfg = size_config(n_layer, n_embd, self.seq_len)
                n = compute_params(cfg)
                ratio = tokens_for_budget(budget, n) / n
                if not self.min_tokens_per_param <= ratio <= self.max_tokens_per_param:
                    continue
                steps = max(1, round(tokens_for_budget(budget, n) / tokens_per_step))
                tokens = steps * tokens_per_step
                runs.append({"budget": budget, "n_layer": n_layer, "n_embd": n_embd,
                             "name": cfg.name, "n_params": n, "steps": steps, "tokens": tokens,
                             "flops": estimate_6n(cfg, tokens),
                             "tokens_per_param": tokens / n})
        return runs


def run_key(run: dict, spec: ScalingSpec) -> str:
    """A stable id of one run: the same budget, shape and recipe always get the same key."""
    payload = json.dumps({"schema": SCHEMA, "budget": run["budget"], "n_layer": run["n_layer"],
                          "n_embd": run["n_embd"], **spec.recipe()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def train_run(run: dict, spec: ScalingSpec, device="cpu", progress: bool = False) -> dict:
    """Train one shape for exactly ``run["steps"]`` steps and measure its held-out loss.

    Returns the run's record: the plan's fields plus ``val_loss`` (mean nats per byte over the
    fixed held-out windows), ``batch_losses`` (one mean per eval batch, for the paired
    bootstrap), ``val_se`` (standard error over batches), ``bits_per_byte``, wall and CPU
    seconds and the load average (the host may be shared).
    """
    cfg = size_config(run["n_layer"], run["n_embd"], spec.seq_len)
    data = load_corpus(spec.corpus)
    model = build_model(cfg, spec.seed, device)
    steps = run["steps"]
    t0, c0 = time.perf_counter(), time.process_time()
    trained = run_training(model, data, steps=steps, batch_size=spec.batch_size,
                           seq_len=spec.seq_len, lr=spec.lr, warmup=max(1, steps // 20),
                           seed=spec.seed,  # every size sees the same batches in order
                           device=device, progress=progress, desc=cfg.name, leave=False)
    train_s = time.perf_counter() - t0
    batch_losses = held_out_losses(model, data, spec, device)
    mean = float(np.mean(batch_losses))
    se = float(np.std(batch_losses, ddof=1) / math.sqrt(len(batch_losses)))
    return {**run, "schema": SCHEMA, "status": "ok", "preset": cfg.name, "workload": "scaling",
            "final_train_loss": trained.last_loss, "val_loss": mean, "val_se": se,
            "bits_per_byte": mean / LN2, "batch_losses": batch_losses,
            "n_params_total": cfg.n_params(), "attention_share": attention_share(cfg, spec.seq_len),
            "seconds": time.perf_counter() - t0, "train_seconds": train_s,
            "cpu_seconds": time.process_time() - c0, "threads": torch.get_num_threads(),
            "loadavg": load_average(), "recipe": spec.recipe(),
            "corpus_sha256": data.sha256, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


@torch.no_grad()
def held_out_losses(model, data, spec: ScalingSpec, device="cpu") -> list[float]:
    """Mean loss of each of ``spec.eval_batches`` fixed held-out batches (the same windows for
    every model, so two models' losses can be compared pair-wise)."""
    was = model.training
    model.eval()
    out = []
    for x, y in fixed_batches(data.val, spec.eval_batches, spec.eval_batch_size, spec.seq_len,
                              device):
        _, loss = model(x, y)
        out.append(float(loss.item()))
    model.train(was)
    return out


def isoflop_sweep(spec: ScalingSpec | None = None, store: Store | str | os.PathLike | None = None,
                  *, resume: bool = True, progress: bool = True, device="cpu",
                  threads: int | None = None,
                  on_point: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Run (or resume) the sweep; return one row per run (budget, shape, N, tokens, loss ...).

    Each finished run is committed to ``store`` at once (default ``results/scaling.sqlite``);
    with ``resume`` a run the store already holds is read back, not trained again (its row
    says ``reused``). ``on_point(row)`` is called after every run — a live chart's hook.
    """
    spec = spec or ScalingSpec()
    st = store if isinstance(store, Store) else Store(store or _default_store())
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = _sweep_runs(spec, st, resume, progress, device, on_point)
    finally:
        torch.set_num_threads(before)  # the caller's setting is theirs
    return runs_frame(rows)


def _sweep_runs(spec, st, resume, progress, device, on_point) -> list[dict]:
    rows = []
    bar = tqdm(spec.plan(), desc="isoflop sweep", disable=not progress)
    for run in bar:
        key = run_key(run, spec)
        bar.set_postfix_str(f"C={run['budget']:.0e} {run['name']} ({run['steps']} steps)")
        if resume and st.has(key):
            rec = {**st.get(key), "reused": True}
        else:
            rec = {**train_run(run, spec, device), "key": key}
            st.append(rec, key=key, sweep="scaling")
            rec = {**rec, "reused": False}
        rows.append(rec)
        if on_point is not None:
            on_point(rec)
    return rows


def _default_store() -> Path:
    """``scaling.sqlite`` beside the measurement records (``EFFLAB_RESULTS`` moves both)."""
    return default_results_dir() / "scaling.sqlite"


def runs_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Run records -> a table, one row per run (the per-batch losses kept as a list column)."""
    keep = ["budget", "name", "n_layer", "n_embd", "n_params", "steps", "tokens", "flops",
            "tokens_per_param", "val_loss", "val_se", "bits_per_byte", "batch_losses",
            "seconds", "cpu_seconds", "loadavg", "reused"]
    rows = [{k: r.get(k) for k in keep if k in r} for r in records]
    return pd.DataFrame(rows)


def export_runs(df_or_records, path: str | os.PathLike = SHIPPED, note: str = "") -> Path:
    """Write a sweep's runs as the JSON ``load_shipped`` reads (what ships in ``data/``)."""
    records = (df_or_records.to_dict("records") if isinstance(df_or_records, pd.DataFrame)
               else list(df_or_records))
    records = [{k: v for k, v in r.items() if k != "reused"} for r in records]  # store detail
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema": SCHEMA, "note": note, "env": environment("cpu"), "runs": records}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_plain))
    os.replace(tmp, path)
    return path


def _plain(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def load_shipped(path: str | os.PathLike = SHIPPED) -> pd.DataFrame:
    """The sweep shipped with efflab (``data/scaling/isoflop.json``) as a runs table."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no shipped sweep at {str(path)!r}: run `efflab scaling` "
                                "and export it")
    payload = json.loads(path.read_text())
    if payload.get("schema") != SCHEMA:
        raise ValueError(f"{str(path)!r} holds schema {payload.get('schema')!r}, not {SCHEMA!r}")
    df = runs_frame(payload["runs"])
    df.attrs["env"] = payload.get("env", {})
    df.attrs["note"] = payload.get("note", "")
    return df


# ----------------------------------------------------------------------------- the fits

def fit_parabola(log_n: np.ndarray, loss: np.ndarray) -> dict:
    """Least-squares loss ≈ c2·x² + c1·x + c0 with x = log10 N; the vertex x* = -c1 / 2c2.

    Returns ``coef`` (c2, c1, c0), ``log_n_opt`` and ``n_opt`` (the vertex), ``loss_opt`` (the
    parabola there), ``curved`` (c2 > 0: a minimum exists) and ``inside`` (the vertex lies
    within the sizes tried: outside it is an extrapolation, not a measurement).
    """
    x, y = np.asarray(log_n, float), np.asarray(loss, float)
    if x.size < 3:
        raise ValueError(f"a parabola needs >= 3 sizes, got {x.size}")
    c2, c1, c0 = np.polyfit(x, y, 2)
    curved = bool(c2 > 0)
    xv = -c1 / (2 * c2) if c2 != 0 else float("nan")
    return {"coef": (float(c2), float(c1), float(c0)), "log_n_opt": float(xv),
            "n_opt": float(10 ** xv) if np.isfinite(xv) else float("nan"),
            "loss_opt": float(c0 - c1 * c1 / (4 * c2)) if c2 != 0 else float("nan"),
            "curved": curved, "inside": bool(curved and x.min() <= xv <= x.max())}


def fit_power_law(x: Iterable[float], y: Iterable[float]) -> dict:
    """y = k · x^e by least squares in log-log: ``exponent`` e, ``prefactor`` k, and e's 95%
    interval from the regression's t distribution (``ci_ols``; infinitely wide with 2 points,
    very wide with 3 — honest about how little three budgets pin down)."""
    lx, ly = np.log10(np.asarray(list(x), float)), np.log10(np.asarray(list(y), float))
    n = lx.size
    if n < 2:
        raise ValueError(f"a power law needs >= 2 points, got {n}")
    e, c = np.polyfit(lx, ly, 1)
    ci = (float("-inf"), float("inf"))
    se = float("inf")
    if n > 2:
        resid = ly - (e * lx + c)
        s2 = float(resid @ resid) / (n - 2)
        se = math.sqrt(s2 / float(((lx - lx.mean()) ** 2).sum()))
        t = t_975(n - 2)
        ci = (float(e - t * se), float(e + t * se))
    return {"exponent": float(e), "prefactor": float(10 ** c), "se": se, "ci_ols": ci, "n": n}


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (two-sided 95%):
    tabulated to 10, then 1.96 + 2.4/dof (within 0.5% beyond)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96 + 2.4 / dof


def _vertices(df: pd.DataFrame, losses: dict[int, np.ndarray]) -> dict[float, dict]:
    out = {}
    for budget, g in df.groupby("budget"):
        idx = g.index.to_list()
        out[float(budget)] = fit_parabola(np.log10(g["n_params"].to_numpy(float)),
                                          np.array([losses[i] for i in idx]))
    return out


def scaling_fit(df: pd.DataFrame, n_boot: int = 400, seed: int = 0) -> dict:
    """The IsoFLOP analysis of a runs table: one parabola per budget, power laws through them.

    Returns ``budgets`` (a table: budget, n_opt, d_opt, loss_opt, inside, the sizes tried and
    the bootstrap 95% interval of n_opt), ``a`` / ``b`` (N_opt ∝ C^a, D_opt ∝ C^b = C^(1-a))
    with ``a_ci`` (paired bootstrap over the held-out batches) and ``a_ci_ols`` (regression
    t-interval), ``n_law`` / ``loss_law`` (power laws N_opt(C), L_opt(C)), ``bootstrap_dropped``
    (resamples where some budget's parabola had no minimum), ``all_inside``, and
    ``skipped_budgets`` (budgets with fewer than 3 sizes finished, left out of the fit).
    """
    counts = df.groupby("budget")["n_params"].transform("count")
    skipped = sorted(float(b) for b in df.loc[counts < 3, "budget"].unique())
    df = df[counts >= 3].reset_index(drop=True)  # a parabola needs three sizes
    if df["budget"].nunique() < 2:
        raise ValueError("a scaling fit needs >= 2 budgets with >= 3 sizes each "
                         f"(budgets with fewer sizes: {skipped})")
    means = {i: float(v) for i, v in df["val_loss"].items()}
    vert = _vertices(df, means)
    budgets = sorted(vert)
    n_law = fit_power_law(budgets, [vert[b]["n_opt"] for b in budgets])
    loss_law = fit_power_law(budgets, [vert[b]["loss_opt"] for b in budgets])
    # paired bootstrap: resample held-out batches, the same indices for every run
    batches = {i: np.asarray(v, float) for i, v in df["batch_losses"].items()}
    k = min(len(v) for v in batches.values())
    rng = np.random.default_rng(seed)
    a_samples, n_samples, dropped = [], {b: [] for b in budgets}, 0
    laws = []  # per kept resample: (k_N, a, k_L, gamma) of the two power laws
    for _ in range(n_boot):
        pick = rng.integers(0, k, k)
        v = _vertices(df, {i: float(b[:k][pick].mean()) for i, b in batches.items()})
        if not all(v[b]["curved"] for b in budgets):
            dropped += 1
            continue
        for b in budgets:
            n_samples[b].append(v[b]["n_opt"])
        nl = fit_power_law(budgets, [v[b]["n_opt"] for b in budgets])
        ll = fit_power_law(budgets, [v[b]["loss_opt"] for b in budgets])
        a_samples.append(nl["exponent"])
        laws.append((nl["prefactor"], nl["exponent"], ll["prefactor"], ll["exponent"]))
    rows = []
    for b in budgets:
        g = df[df["budget"] == b]
        s = np.array(n_samples[b]) if n_samples[b] else np.array([np.nan])
        rows.append({"budget": b, "n_opt": vert[b]["n_opt"],
                     "n_opt_lo": float(np.nanpercentile(s, 2.5)),
                     "n_opt_hi": float(np.nanpercentile(s, 97.5)),
                     "d_opt": tokens_for_budget(b, vert[b]["n_opt"]),
                     "loss_opt": vert[b]["loss_opt"], "curved": vert[b]["curved"],
                     "inside": vert[b]["inside"], "n_min": int(g["n_params"].min()),
                     "n_max": int(g["n_params"].max()), "sizes": int(len(g)),
                     "coef": vert[b]["coef"]})
    a = n_law["exponent"]
    a_ci = ((float(np.percentile(a_samples, 2.5)), float(np.percentile(a_samples, 97.5)))
            if a_samples else (float("nan"), float("nan")))
    return {"budgets": pd.DataFrame(rows), "a": a, "b": 1.0 - a, "a_ci": a_ci,
            "b_ci": (1.0 - a_ci[1], 1.0 - a_ci[0]), "a_ci_ols": n_law["ci_ols"],
            "n_law": n_law, "loss_law": loss_law, "bootstrap": len(a_samples),
            "bootstrap_laws": np.array(laws, float).reshape(-1, 4),
            "bootstrap_dropped": dropped, "all_inside": all(r["inside"] for r in rows),
            "skipped_budgets": skipped}


def predict_optimal(fit: dict, budget: float) -> dict:
    """The fit's compute-optimal model for ``budget``: N_opt = k·C^a, D_opt = C / 6N_opt, and
    the loss the loss law L_opt = k_L·C^γ predicts there.

    Where the fit kept its bootstrap laws (``scaling_fit``'s ``bootstrap_laws``), ``n_opt_lo``
    / ``n_opt_hi`` and ``loss_lo`` / ``loss_hi`` are the 95% bootstrap interval of the same
    prediction (evaluation noise only; NaN when no resample kept a minimum at every budget).
    """
    n = fit["n_law"]["prefactor"] * budget ** fit["n_law"]["exponent"]
    loss = fit["loss_law"]["prefactor"] * budget ** fit["loss_law"]["exponent"]
    out = {"budget": float(budget), "n_opt": float(n), "d_opt": tokens_for_budget(budget, n),
           "loss": float(loss), "tokens_per_param": tokens_for_budget(budget, n) / n,
           "n_opt_lo": float("nan"), "n_opt_hi": float("nan"),
           "loss_lo": float("nan"), "loss_hi": float("nan")}
    laws = np.asarray(fit.get("bootstrap_laws", np.empty((0, 4))), float).reshape(-1, 4)
    if len(laws):
        ns = laws[:, 0] * budget ** laws[:, 1]       # (resamples,) N_opt at this budget
        ls = laws[:, 2] * budget ** laws[:, 3]       # (resamples,) L_opt at this budget
        out["n_opt_lo"], out["n_opt_hi"] = (float(q) for q in np.percentile(ns, [2.5, 97.5]))
        out["loss_lo"], out["loss_hi"] = (float(q) for q in np.percentile(ls, [2.5, 97.5]))
    return out


def interval_verdict(fit: dict) -> str:
    """One sentence on what the fit's exponent interval shows, from its own numbers: how many
    budgets it rests on, whether the regression can give an interval at all, how wide the
    bootstrap interval is, and that it covers evaluation noise only (not training seeds)."""
    n = fit["n_law"]["n"]
    lo, hi = fit["a_ci"]
    kept, dropped = fit["bootstrap"], fit["bootstrap_dropped"]
    ols = fit["a_ci_ols"]
    if n == 2:
        reg = "two budgets fix a line exactly, so the regression gives no interval at all"
    else:
        reg = (f"the regression interval over {n} budgets is [{ols[0]:.2f}, {ols[1]:.2f}], "
               f"{ols[1] - ols[0]:.2f} wide")
    if not kept:
        boot = (f"no bootstrap resample of {dropped} kept a minimum at every budget, so the "
                "exponent has **no interval**: read it as a guess")
    else:
        boot = (f"the bootstrap 95% interval of a is [{lo:.2f}, {hi:.2f}] ({hi - lo:.2f} wide, "
                f"{kept} resamples kept, {dropped} dropped for a budget without a minimum)")
    return (f"From {n} budgets, {reg}; {boot}. It resamples only the held-out batches: it says "
            f"how much the evaluation's noise moves a, not what another training seed or another "
            f"budget would do, so the true spread is wider.")


def extrapolation_verdict(measured: float, measured_se: float, prediction: dict,
                          fit_budget: float, guess: float | None = None) -> str:
    """The verdict on a check by training: the loss ``measured`` (± 1.96·``measured_se``) at
    ``prediction["budget"]``, ``fit_budget`` being the largest budget the fit saw, against the
    fit's predicted loss with its bootstrap interval and the learner's ``guess``."""
    budget = float(prediction["budget"])
    k = budget / float(fit_budget)
    where = (f"{k:.3g}x beyond the largest budget of the fit (an extrapolation)" if k > 1
             else f"{k:.3g}x the largest budget of the fit (inside it: an interpolation)")
    pred, lo, hi = prediction["loss"], prediction.get("loss_lo"), prediction.get("loss_hi")
    diff = measured - pred
    text = (f"At C = {budget:.0e}, {where}: measured {measured:.3f} ± {1.96 * measured_se:.3f} "
            f"nats per byte, the fit predicted {pred:.3f} ({diff:+.3f}, "
            f"{abs(diff) / pred:.1%} {'above' if diff > 0 else 'below'} it)")
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        if lo <= measured <= hi:
            text += f"; that is **inside** the fit's bootstrap 95% interval [{lo:.3f}, {hi:.3f}]"
        else:
            edge = hi if measured > hi else lo
            text += (f"; that is **outside** the fit's bootstrap 95% interval [{lo:.3f}, "
                     f"{hi:.3f}], by {abs(measured - edge):.3f}: the interval covers evaluation "
                     "noise only, and the law missed by more than that")
        reach = abs(diff) <= 1.96 * measured_se
        text += (f" (the measurement's own 95% eval interval {'does' if reach else 'does not'} "
                 "reach the prediction)")
    else:
        text += "; the fit has no bootstrap interval to judge it by"
    if guess is not None:
        g = float(guess)
        closer = "closer than" if abs(g - measured) < abs(diff) else "further than"
        text += (f". Your guess {g:.3f} was {g - measured:+.3f} from the measurement, "
                 f"{closer} the fit")
    return text + "."


def train_at_prediction(fit: dict, budget: float, spec: ScalingSpec | None = None,
                        store: Store | str | os.PathLike | None = None, *,
                        threads: int | None = 1) -> tuple[dict, dict]:
    """Check a fit by training: the ladder shape nearest the fit's N_opt at ``budget`` is trained
    to exactly that budget (steps = C / 6·N·B·T) with ``spec``'s recipe, and kept in the results
    store like a sweep's run (a rerun reads it back). Returns ``(prediction, run record)``."""
    spec = spec or ScalingSpec()
    want = predict_optimal(fit, budget)
    shape = nearest_shape(want["n_opt"], spec.sizes, spec.seq_len)
    rows = isoflop_sweep(replace(spec, budgets=(float(budget),), sizes=(shape,),
                                 min_tokens_per_param=1e-9, max_tokens_per_param=1e12),
                         store, progress=False, threads=threads)
    return want, rows.iloc[0].to_dict()


def nearest_shape(n_params: float, sizes: Iterable[tuple[int, int]] = LADDER,
                  block_size: int = 64) -> tuple[int, int]:
    """The ladder shape whose compute parameters are closest to ``n_params`` (in log)."""
    return min(sizes, key=lambda s: abs(math.log(compute_params(size_config(*s, block_size))
                                                  / n_params)))


__all__ = ["SCHEMA", "LADDER", "PUBLISHED", "ScalingSpec", "size_config", "tokens_for_budget", "attention_share", "chinchilla_optimum",
           "run_key", "train_run", "held_out_losses", "isoflop_sweep", "runs_frame",
           "export_runs", "load_shipped", "fit_parabola", "fit_power_law", "scaling_fit",
           "predict_optimal", "interval_verdict", "extrapolation_verdict", "train_at_prediction",
           "nearest_shape"]
