"""The lab's ground floor: the model, its presets and toggles, the corpus, weights and the store.

- :mod:`~efflab.core.config` — model presets (``ModelConfig``), the learner's toggles (``Knobs``), checked-data errors
- :mod:`~efflab.core.model` — the GPT every lesson measures (named swap points, no technique flags)
- :mod:`~efflab.core.data` — corpora as bytes, the deterministic split, batches
- :mod:`~efflab.core.weights` — safetensors checkpoints and their training records
- :mod:`~efflab.core.records` — what a measurement record is (schema, statuses, table form)
- :mod:`~efflab.core.store` — the append-only SQLite store of records

Imports nothing else of efflab: every other layer builds on this one.
"""
