"""Experiment ids that name what was run.

A tuner id has FuxiCTR's shape ``<base>_<NNN>_<hash8>``: the base expid, the index in the grid
and the first 8 hex digits of :func:`experiment_hash`. The hash is a sha256 over canonical
JSON of the parameters that define the experiment (:func:`hashed_params`), so

- permuting values between keys changes the id (the peers hashed the *sorted characters* of
  the JSON text, which made ``batch_size 128 / dim_feedforward 256`` and
  ``256 / 128`` the same experiment);
- the key order, ``1e-3`` vs ``0.001`` and ``1`` vs ``1.0`` for a float field do not;
- run-environment keys (device, workers, output folder, verbosity) do not.

``load_config`` re-derives the hash of a tuner id from the resolved parameters, so an id whose
config was edited by hand no longer passes silently.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
import types
import typing
from typing import Any

from mmctr.config.schema import (
    IGNORED_KEYS,
    MODEL_SCHEMAS,
    DatasetConfig,
    TrainerConfig,
    field_types,
)

# Keys that say where and how verbosely an experiment runs, not what it is.
RUN_ENVIRONMENT_KEYS = frozenset(
    {
        "expid",
        "gpu",
        "verbose",
        "num_workers",
        "model_root",
        "pin_memory",
        "data_on_device",
        "cuda_graphs",
        "tuner",
        "baselines",
        "tensorboard",
        "num_threads",
    }
)

# <base>_<NNN>_<hash8>; FuxiCTR formats the index with :03, so 1000 and up have more digits.
TUNER_ID_RE = re.compile(r"^(.*)_(\d{3,})_([0-9a-f]{8})$")


def hashed_params(params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that defines the experiment (what the hash covers).

    Drops the run-environment keys (:data:`RUN_ENVIRONMENT_KEYS`) and the FuxiCTR keys mmctr
    ignores (``IGNORED_KEYS``). Idempotent.
    """
    return {
        k: v for k, v in params.items() if k not in RUN_ENVIRONMENT_KEYS and k not in IGNORED_KEYS
    }


def coerce_numbers(value: Any, annotation: Any) -> Any:
    """Turn ints into floats wherever ``annotation`` wants a float and not an int.

    Recurses into ``list[...]``, ``dict[..., ...]`` and unions; everything else is returned as
    is (type *checking* is the loader's job). ``coerce_numbers(0, float | str | None) == 0.0``.
    """
    if value is None or isinstance(value, bool):
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if isinstance(value, int):
            return float(value) if float in args and int not in args else value
        for arg in args:
            arg_origin = typing.get_origin(arg)
            if (arg_origin is list and isinstance(value, list)) or (
                arg_origin is dict and isinstance(value, dict)
            ):
                return coerce_numbers(value, arg)
        return value
    if annotation is float and isinstance(value, int):
        return float(value)
    if origin is list and isinstance(value, list):
        (item_type,) = typing.get_args(annotation)
        return [coerce_numbers(v, item_type) for v in value]
    if origin is dict and isinstance(value, dict):
        _, value_type = typing.get_args(annotation)
        return {k: coerce_numbers(v, value_type) for k, v in value.items()}
    return value


def key_type(key: str, model: Any = None) -> Any:
    """The declared type of a flat config key (None when no schema declares it).

    Looks in the dataset and trainer schemas, then in the schema of ``model`` (or in every
    model schema when ``model`` is unknown).
    """
    classes: list[type] = [DatasetConfig, TrainerConfig]
    if isinstance(model, str) and model in MODEL_SCHEMAS:
        classes.append(MODEL_SCHEMAS[model])
    else:
        classes.extend(MODEL_SCHEMAS.values())
    for cls in classes:
        annotation = field_types(cls).get(key)
        if annotation is not None:
            return annotation
    return None


def normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    """Plain-Python copy of a flat params dict with ints as floats in float fields."""
    plain = _plain(params)
    model = plain.get("model")
    out = {}
    for key, value in plain.items():
        annotation = key_type(key, model)
        out[key] = value if annotation is None else coerce_numbers(value, annotation)
    return out


def canonical_json(params: dict[str, Any]) -> str:
    """The exact text :func:`experiment_hash` hashes: sorted keys, no spaces, floats by repr."""
    return json.dumps(
        normalise_params(hashed_params(params)),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=True,
    )


def experiment_hash(params: dict[str, Any]) -> str:
    """Full sha256 hex digest of the canonical JSON of ``hashed_params(params)``.

    Pass the resolved flat params (``ExperimentConfig.params``); the run-environment and
    ignored keys are dropped here, so passing them too changes nothing.
    """
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def make_expid(base: str, index: int, params: dict[str, Any]) -> str:
    """``<base>_<index:03d>_<hash8>``, e.g. ``Transformer_DCN_rank1_001_3fa4c2d1``."""
    return f"{base}_{index:03d}_{experiment_hash(params)[:8]}"


def parse_tuner_id(expid: str) -> tuple[str, int, str] | None:
    """``(base, index, hash8)`` of a tuner id, None for any other id."""
    m = TUNER_ID_RE.match(expid)
    if m is None:
        return None
    return m.group(1), int(m.group(2)), m.group(3)


def _plain(value: Any) -> Any:
    """Numbers (numpy scalars too) -> int/float, tuples -> lists, mapping keys -> str."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
