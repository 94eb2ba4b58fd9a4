"""What a learner sees: the Lab panel, charts, recorded predictions and records explained in words.

- :mod:`~efflab.ui.lab` — the panel (widgets); its plain-data halves :mod:`~efflab.ui.panel_state`
  (settings in, a checked plan out) and :mod:`~efflab.ui.panel_runner` (runs the plan)
- :mod:`~efflab.ui.charts` — every chart (altair only, no torch) and the live view
- :mod:`~efflab.ui.predictions` — a learner's guess, recorded before the measurement
- :mod:`~efflab.ui.explanation` — a record explained metric by metric

May import every layer below it (core … studies); check and course may import it, never the reverse.
This package's ``__init__`` imports nothing, so ``efflab.ui.predictions`` stays free of altair.
"""
