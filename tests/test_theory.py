"""efflab.theory is a plain index: each formula listed once, under one name, in its table, and no
two formulas that compute the same thing."""

import inspect
import itertools
import random
import re

import efflab.theory as theory
from efflab.core.config import ModelConfig


def _entries():
    return {name: getattr(theory, name) for name in theory.__all__}


def test_every_entry_is_in_the_table_once_and_the_table_lists_nothing_else():
    listed = re.findall(r"\| :(?:func|class):`(\w+)`", theory.__doc__)
    assert len(listed) == len(set(listed)), "a formula listed twice in the table"
    assert sorted(listed) == sorted(theory.__all__)
    assert len(theory.__all__) == len(set(theory.__all__))


def test_no_function_is_indexed_under_two_names():
    by_id: dict[int, list[str]] = {}
    for name, obj in _entries().items():
        by_id.setdefault(id(obj), []).append(name)
    assert [names for names in by_id.values() if len(names) > 1] == []


def _random_config(rng: random.Random) -> ModelConfig:
    n_head = rng.choice([1, 2, 4, 8])
    n_kv = rng.choice([d for d in (1, 2, 4, 8) if n_head % d == 0])
    return ModelConfig("probe", n_layer=rng.randint(1, 6), n_head=n_head,
                       n_embd=n_head * rng.choice([8, 16, 32]),
                       block_size=rng.choice([16, 64, 128]), n_kv_head=n_kv)


PROBES = {"ModelConfig": _random_config, "int": lambda r: r.randint(1, 64),
          "float": lambda r: r.uniform(0.05, 0.95), "bool": lambda r: r.random() < 0.5}


def _probe_args(fn, rng):
    """Random arguments for ``fn``'s required parameters, or None when a type has no probe."""
    args = []
    for p in inspect.signature(fn).parameters.values():
        if p.default is not p.empty:
            continue
        draw = PROBES.get(getattr(p.annotation, "__name__", p.annotation))
        if draw is None:
            return None
        args.append(draw(rng))
    return args


def test_no_two_formulas_with_the_same_parameters_compute_the_same_values():
    groups: dict[tuple, list[str]] = {}
    for name, fn in _entries().items():
        if inspect.isfunction(fn):
            params = tuple(inspect.signature(fn).parameters)
            groups.setdefault(params, []).append(name)
    compared = 0
    for params, names in groups.items():
        for a, b in itertools.combinations(names, 2):
            rng = random.Random(0)
            probes = [_probe_args(_entries()[a], rng) for _ in range(8)]
            if any(p is None for p in probes):
                continue
            same = [_entries()[a](*p) == _entries()[b](*p) for p in probes]
            assert not all(same), f"theory.{a} and theory.{b} agree on every probe {params}"
            compared += 1
    assert compared >= 1  # compute_params and matmul_weights, both of a ModelConfig
