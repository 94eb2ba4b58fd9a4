"""What the lab panel's controls say, as plain data: settings in, a checked :class:`Plan` out.

The panel (:mod:`efflab.ui.lab`) reads its widgets into a :class:`PanelSettings` — the raw values
the learner sees (text boxes as text) — and this module turns them into the sweep to run,
raising :class:`~efflab.core.config.ConfigError` naming the field for anything wrong. Nothing here
touches a widget, so every rule of the panel is testable without ipywidgets:

* text -> knob value goes through the one parser, :func:`efflab.core.config.parse_knob`
  (``"8"``, ``"1.5"``, ``"auto"``, a choice), then ``Knobs`` checks the range;
* the values box is a comma- (or semicolon-) separated list, each value parsed and checked
  against the base knobs before any work;
* the budget box is MiB or "none"; ``run()``'s keyword arguments become new settings
  (:func:`apply_run_args`) that the panel then shows, so the panel always shows what ran;
* :func:`gpu_refusal` and :func:`choice_notes` say what this machine refuses, up front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from efflab.core.config import (
    ConfigError,
    Knobs,
    check_choice,
    check_int,
    check_real,
    get_preset,
    knob_fields,
    parse_knob,
)
from efflab.measurement.hardware import RefusedError, pick_device
from efflab.studies.precision_formats import availability_table

MIB = 2**20
DEFAULT_VALUES = (1, 2, 4, 8, 16)
AUTO = "auto"  # what a None-able knob's text box shows for None
NO_BUDGET = "none"
UNCHANGED = "unchanged"  # run(budget_bytes=...) left as it is


@dataclass(frozen=True)
class Plan:
    """One sweep, fully read from the controls and checked: what Run (or ``run()``) measures."""

    preset: str
    base: Knobs
    vary: str
    values: tuple
    budget_bytes: int | None
    target_s: float
    resume: bool

    def describe(self) -> str:
        """One line: preset · workload · the varied knob and its values · the budget."""
        vals = ", ".join(format_value(v) for v in self.values)
        budget = f", budget {self.budget_bytes / MIB:,.1f} MiB" if self.budget_bytes else ""
        return f"{self.preset} · {self.base.workload} · {self.vary} ∈ [{vals}]{budget}"


@dataclass(frozen=True)
class PanelSettings:
    """The controls' values as the learner sees them (text boxes as their text).

    ``knobs`` maps every knob to its control's value: the text of a None-able knob's box
    (``"auto"``, ``"64"``), the choice of a dropdown, the number of a number box.
    """

    preset: str
    vary: str
    values: str
    budget: str
    target_s: float
    knobs: Mapping[str, object]
    resume: bool = True

    def replace(self, **changes) -> PanelSettings:
        """A copy with ``changes`` applied (fields of this class)."""
        return dataclasses.replace(self, **changes)


def fields_by_name() -> dict[str, dict]:
    """``knob_fields()`` keyed by knob name, in the order of ``Knobs``."""
    return {f["name"]: f for f in knob_fields()}


def format_value(v) -> str:
    """A knob value as the panel writes it: None is "auto"."""
    return AUTO if v is None else str(v)


def control_value(field: dict, value):
    """What a knob's control holds for ``value``: text for a None-able knob, else the value."""
    return format_value(value) if field["optional"] else value


def check_vary(vary: str) -> None:
    """Raise ConfigError unless ``vary`` names a knob."""
    check_choice("vary", vary, tuple(fields_by_name()))


def read_knob(name: str, raw):
    """A control's value -> the knob's value: text through :func:`parse_knob`, a number or
    choice as it is (the widget already typed it)."""
    return parse_knob(name, raw) if isinstance(raw, str) else raw


def parse_values(vary: str, text: str) -> tuple:
    """The values box -> a tuple of values of knob ``vary`` (quotes around a choice allowed)."""
    parts = [p.strip().strip("'\"") for p in str(text).replace(";", ",").split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"values of {vary}", text, "a comma-separated list such as 1, 2, 4")
    return tuple(parse_knob(vary, p) for p in parts)


def parse_budget(text: str) -> int | None:
    """The budget box (MiB, or "none") -> bytes, or None for no budget."""
    s = str(text).strip()
    if s.lower() in ("", NO_BUDGET, AUTO):
        return None
    try:
        mib = float(s)
    except ValueError:
        mib = -1.0
    if not mib > 0:
        raise ConfigError("memory budget (MiB)", s, f"a positive number of MiB or {NO_BUDGET!r}")
    return int(mib * MIB)


def format_budget(budget_bytes: int | None) -> str:
    """Bytes -> what the budget box shows (MiB, or "none")."""
    return NO_BUDGET if budget_bytes is None else f"{budget_bytes / MIB:g}"


def make_plan(settings: PanelSettings) -> Plan:
    """Read the settings into a checked :class:`Plan` (ConfigError names a bad field).

    Every value of the varied knob is checked against the base knobs now, before any work.
    """
    check_vary(settings.vary)
    base = Knobs(**{name: read_knob(name, raw) for name, raw in settings.knobs.items()})
    values = parse_values(settings.vary, settings.values)
    for v in values:
        base.replace(**{settings.vary: v})
    return Plan(preset=settings.preset, base=base, vary=settings.vary, values=values,
                budget_bytes=parse_budget(settings.budget), target_s=float(settings.target_s),
                resume=settings.resume)


def apply_run_args(settings: PanelSettings, vary: str | None = None,
                   values: Sequence | None = None, preset: str | None = None,
                   budget_bytes: int | None | str = UNCHANGED, target_s: float | None = None,
                   resume: bool | None = None, **knob_overrides) -> PanelSettings:
    """The settings after ``Lab.run(...)``'s arguments, each checked first (naming the field);
    arguments left out (None, ``budget_bytes="unchanged"``) keep the current setting."""
    changes: dict = {}
    if knob_overrides:
        checked = Knobs().replace(**knob_overrides)  # unknown names and bad values raise here
        fields = fields_by_name()
        changes["knobs"] = {**settings.knobs,
                            **{name: control_value(fields[name], getattr(checked, name))
                               for name in knob_overrides}}
    if preset is not None:
        get_preset(preset)
        changes["preset"] = preset
    if vary is not None:
        check_vary(vary)
        changes["vary"] = vary
        choices = fields_by_name()[vary]["choices"]
        if values is None and choices and vary != settings.vary:  # a Literal knob: every choice
            changes["values"] = ", ".join(choices)
    if values is not None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError("values", values, "a non-empty list such as [1, 2, 4]")
        changes["values"] = ", ".join(format_value(v) for v in values)
    if budget_bytes != UNCHANGED:
        check_int("budget_bytes", budget_bytes, lo=1, optional=True)
        changes["budget"] = format_budget(budget_bytes)
    if target_s is not None:
        check_real("target_s", target_s, 0.01, 600, note="seconds")
        changes["target_s"] = float(target_s)
    if resume is not None:
        changes["resume"] = bool(resume)
    return settings.replace(**changes)


def settings_rows(settings: PanelSettings) -> dict[str, object]:
    """The settings as labelled rows, for the panel's static summary (varied knob left out:
    the values row says it)."""
    fields = fields_by_name()
    knobs = {name: format_value(read_knob(name, raw)) if fields[name]["optional"] else raw
             for name, raw in settings.knobs.items()}
    return {"preset": settings.preset, "vary": settings.vary, "values": settings.values,
            "memory budget (MiB)": settings.budget, "seconds per point": settings.target_s,
            **{f"knob {k}": v for k, v in knobs.items() if k != settings.vary}}


# ----------------------------------------------------------------------------- what this machine refuses

def gpu_refusal(preset: str, device: str | None = None) -> str | None:
    """Why ``preset`` cannot run on this machine (a preset that needs a GPU, none here), else
    None. The message is the one ``measure`` would record, from ``pick_device``."""
    cfg = get_preset(preset)
    try:
        pick_device(cfg, device)
    except RefusedError as e:
        return str(e)
    return None


def choice_notes(preset: str, name: str, calibration: dict | None) -> dict[str, str]:
    """Short reasons shown beside choices of knob ``name`` this machine refuses (precisions
    slower than this machine can bear, from its calibration); empty without a calibration."""
    if name != "precision" or calibration is None:
        return {}
    table = availability_table(get_preset(preset), Knobs(batch_size=8), calibration)
    return {r["precision"]: f"refused here: {r['measured peak GFLOP/s']:.1f} GFLOP/s"
            for _, r in table.iterrows() if not r["runs here"]}


__all__ = ["Plan", "PanelSettings", "MIB", "DEFAULT_VALUES", "AUTO", "NO_BUDGET", "UNCHANGED",
           "fields_by_name", "format_value", "control_value", "check_vary", "read_knob",
           "parse_values", "parse_budget", "format_budget", "make_plan", "apply_run_args",
           "settings_rows", "gpu_refusal", "choice_notes"]
