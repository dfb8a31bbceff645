"""Load a FuxiCTR experiment config by id, apply overrides, and check every key.

The YAML layout is FuxiCTR's, unchanged::

    <config_dir>/model_config.yaml      (or model_config/*.yaml)
        Base:            keys shared by every experiment of the folder
        <expid>:         the experiment; must say dataset_id (here or in Base)
    <config_dir>/dataset_config.yaml    (or dataset_config/*.yaml)
        <dataset_id>:    data paths, feature_cols, label_col

The resolved experiment is one flat dict: ``Base``, then the expid block, then the dataset
block, then ``--override key=value`` (later wins). Unlike FuxiCTR, nothing is swallowed by
``**kwargs``: every key must be declared by the dataset, trainer or model schema
(:mod:`mmctr.config.schema`), or be a FuxiCTR key we knowingly ignore (a one-line notice).
All problems of a config are reported together in one :class:`ConfigError`.

Example::

    cfg = load_config("config/demo", "Transformer_DCN_demo", ["learning_rate=5e-4"])
    cfg.model.transformer_layers, cfg.trainer.learning_rate, cfg.dataset.item_features
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from mmctr.config.errors import ConfigError
from mmctr.config.expid import TUNER_ID_RE, coerce_numbers, experiment_hash
from mmctr.config.schema import (  # noqa: F401 (METRICS, MONITOR_MODES: old imports)
    FEATURE_TYPES,
    IGNORED_KEYS,
    METRICS,
    MODEL_SCHEMAS,
    MONITOR_MODES,
    DatasetConfig,
    FeatureSpec,
    LabelSpec,
    ModelBase,
    TrainerConfig,
    check_feature_config,
    field_checks,
    field_names,
    field_types,
)

OVERRIDE_SOURCE = "--override"
HASH_OK = "ok"
HASH_NOT_TUNER_ID = "not a tuner id"
HASH_MISMATCH_ALLOWED = "MISMATCH allowed by --allow-hash-mismatch"
HASH_FOREIGN = "not checked: a tuner-style id of another tool (no 'tuner' key; FuxiCTR's hash)"

# FuxiCTR feature_cols keys that mmctr accepts and ignores (a notice each).
IGNORED_FEATURE_KEYS = frozenset(
    {
        "share_embedding",
        "pretrained_emb",
        "freeze_emb",
        "encoder",
        "splitter",
        "feature_encoder",
        "emb_output_dim",
        "padding",
        "fill_na",
        "preprocess",
        "remap",
        "min_categr_count",
        "sep",
    }
)
FEATURE_DTYPES = ("int", "float", "str")

_WHY_IGNORED = {
    "gpu": "the device comes from --gpu",
    "pickle_feature_encoder": "mmctr fits no feature encoder; vocab sizes come from feature_cols",
}

_DATASET_KEYS = frozenset(field_names(DatasetConfig))
_TRAINER_KEYS = frozenset(field_names(TrainerConfig))
_META_KEY = "_meta"
# The value rules of the keys are part of their fields (schema.key, schema.field_checks).


def _fail(header: str, problems: list[str]) -> ConfigError:
    if len(problems) == 1:
        return ConfigError(f"{header}: {problems[0]}", problems)
    lines = "\n".join(f"  - {p}" for p in problems)
    return ConfigError(f"{header}: {len(problems)} problems:\n{lines}", problems)


# --------------------------------------------------------------------------------------- YAML

_FLOAT_RE = re.compile(
    r"""^(?:
        [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?   # 1.5  1.  1.e-3  1.5E+3
      | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+                 # 1e-3  5E-4  (a string for PyYAML)
      | [-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?          # .5  .5e-3
      | [-+]?\.(?:inf|Inf|INF)
      | \.(?:nan|NaN|NAN)
    )$""",
    re.X,
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with two fixes for config files.

    - ``1e-3`` / ``5E-4`` are floats (YAML 1.1 wants a dot, so PyYAML reads them as strings
      and ``learning_rate: 1e-3`` would reach the optimizer as text);
    - a key repeated in one mapping is an error (PyYAML keeps the last one silently).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # unhashable key: SafeLoader reports it below
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found key {key!r} twice (first on line {first.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _FLOAT_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with :class:`YamlLoader`; syntax errors become a ConfigError."""
    with open(path, encoding="utf-8") as fh:
        try:
            return yaml.load(fh, Loader=YamlLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: where and what (``line 3, column 5: found duplicate key 'epochs'``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (
        f" ({context})" if context else ""
    )


def parse_yaml_value(text: str) -> Any:
    """A YAML scalar / flow list / flow mapping, with the same float rules as config files."""
    return yaml.load(text, Loader=YamlLoader)


# ------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class ExperimentConfig:
    """One resolved experiment: typed parts for the code, the flat dict for the record.

    ``params`` is the flat FuxiCTR-style dict (plain YAML types; ``feature_cols`` with name
    lists expanded, ints turned into floats in float fields); ``sources`` says where each key
    came from (``file:block`` or ``--override``).
    """

    expid: str
    dataset: DatasetConfig
    model: ModelBase
    trainer: TrainerConfig
    params: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    hash_check: str = HASH_NOT_TUNER_ID

    @property
    def group_col(self) -> str | None:
        """The column gAUC groups by: ``group_id``, else ``user_id`` when the data has it."""
        if self.trainer.group_id:
            return self.trainer.group_id
        return "user_id" if any(f.name == "user_id" for f in self.dataset.feature_cols) else None

    @property
    def run_dir(self) -> Path:
        """``<model_root>/<dataset_id>/<expid>``, FuxiCTR's checkpoint folder."""
        return Path(self.trainer.model_root) / self.dataset.dataset_id / self.expid

    def to_dict(self) -> dict[str, Any]:
        """``{"expid": ..., **params, "_meta": {...}}``: plain YAML/JSON, enough for
        :meth:`from_dict`."""
        out: dict[str, Any] = {"expid": self.expid}
        out.update(copy.deepcopy(self.params))
        out[_META_KEY] = {
            "sources": dict(self.sources),
            "overrides": list(self.overrides),
            "notices": list(self.notices),
            "hash_check": self.hash_check,
        }
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Rebuild (and re-validate) from :meth:`to_dict` output, reading no file.

        A plain flat dict with an ``expid`` key works too. The hash is not re-checked: the
        recorded ``hash_check`` is kept.
        """
        d = dict(d)
        if "expid" not in d:
            raise ConfigError("a saved experiment config needs an 'expid' key; this one has none")
        expid = str(d.pop("expid"))
        meta = d.pop(_META_KEY, None) or {}
        cfg = build_config(
            expid,
            d,
            sources=meta.get("sources"),
            overrides=meta.get("overrides", []),
            origin=f"saved config of expid {expid!r}",
        )
        notices = list(meta["notices"]) if "notices" in meta else cfg.notices
        hash_check = meta.get("hash_check", HASH_NOT_TUNER_ID)
        cfg = dataclasses.replace(cfg, notices=notices, hash_check=hash_check)
        return cfg


# ------------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value)``; the value is read as YAML (``5e-4`` is a float,
    ``[64,32]`` a list, ``null`` None, ``True`` a bool)."""
    if "=" not in text:
        raise ConfigError(
            f"--override {text!r} is not KEY=VALUE (example: --override learning_rate=5e-4)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(
            f"--override {text!r}: {key!r} is not a config key name "
            "(example: --override learning_rate=5e-4)"
        )
    if not raw.strip():
        raise ConfigError(f"--override {text!r} has no value; write {key}=null for null")
    try:
        value = parse_yaml_value(raw)
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise ConfigError(f"--override {text!r}: the value is not valid YAML ({problem})") from None
    return key, value


def list_expids(config_dir: str | os.PathLike) -> list[str]:
    """Every experiment id of a config folder (all blocks but ``Base``), in file order."""
    blocks = _read_blocks(_config_files(Path(config_dir), "model_config"))
    return [name for name in blocks if name != "Base"]


def read_expid_blocks(
    config_dir: str | os.PathLike, expid: str, what: str = "expid"
) -> list[tuple[str, dict[str, Any]]]:
    """``[(source, block)]``: the Base block (if any) then the expid's block, in FuxiCTR's
    merge order; ``source`` is ``"<file>:<block>"``. Raises ConfigError for an unknown id."""
    model_files = _config_files(Path(config_dir), "model_config")
    blocks = _read_blocks(model_files)
    if expid not in blocks or expid == "Base":
        raise _unknown_name(what, expid, [b for b in blocks if b != "Base"], model_files)
    exp_path, exp_block = _single(blocks[expid], "expid", expid)
    base_path, base_block = _pick_base(blocks.get("Base", []), exp_path)
    out = [] if base_path is None else [(f"{base_path}:Base", base_block)]
    return [*out, (f"{exp_path}:{expid}", exp_block)]


def read_dataset_block(
    config_dir: str | os.PathLike, dataset_id: str
) -> tuple[Path, dict[str, Any]]:
    """(file, block) of ``dataset_id`` in the folder's dataset_config; ConfigError if absent."""
    dataset_files = _config_files(Path(config_dir), "dataset_config")
    data_blocks = _read_blocks(dataset_files)
    if dataset_id not in data_blocks:
        raise _unknown_name("dataset_id", dataset_id, list(data_blocks), dataset_files)
    return _single(data_blocks[dataset_id], "dataset_id", dataset_id)


def _check_folder_name(what: str, name: str, source: str) -> None:
    """``expid`` and ``dataset_id`` name folders (``<model_root>/<dataset_id>/<expid>/``) and
    files (``<expid>.zip``): a name that is not one plain path component could write outside
    ``model_root``."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f"{what} {name!r} (from {source}) is not a plain name: it names a folder, so it "
            "must not be empty, '.' or '..', or hold '/' or '\\'"
        )


def load_config(
    config_dir: str | os.PathLike,
    expid: str,
    overrides: list[str] | None = None,
    allow_hash_mismatch: bool = False,
) -> ExperimentConfig:
    """Resolve ``expid`` from ``config_dir`` (FuxiCTR layout), apply ``overrides``
    (``"key=value"`` strings), validate everything and check a tuner id's hash.

    Raises :class:`ConfigError` listing every problem at once.
    """
    config_dir = Path(config_dir)
    overrides = list(overrides or [])
    parsed = [parse_override(text) for text in overrides]

    params: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def merge(block: dict[str, Any], source: str) -> None:
        for key, value in block.items():
            params[key] = copy.deepcopy(value)
            sources[key] = source

    _check_folder_name("expid", expid, "--expid")
    # Base, then the expid block.
    expid_blocks = read_expid_blocks(config_dir, expid)
    for source, block in expid_blocks:
        merge(block, source)
    exp_source = expid_blocks[-1][0]

    # An override of dataset_id picks the dataset block, so it applies before that block.
    for key, value in parsed:
        if key == "dataset_id":
            merge({key: value}, OVERRIDE_SOURCE)
    if "dataset_id" not in params:
        raise ConfigError(
            f"expid {expid!r} ({exp_source}) has no dataset_id: add 'dataset_id: <id>' to its "
            "block (or to Base) naming a block of dataset_config.yaml"
        )
    dataset_id = params["dataset_id"]
    if not isinstance(dataset_id, str):
        raise ConfigError(
            f"dataset_id (from {sources['dataset_id']}) must be a name, got {_show(dataset_id)}"
        )
    _check_folder_name("dataset_id", dataset_id, sources["dataset_id"])
    data_path, data_block = read_dataset_block(config_dir, dataset_id)
    if data_block.get("dataset_id", dataset_id) != dataset_id:
        raise ConfigError(
            f"{data_path}: block {dataset_id!r} says dataset_id: "
            f"{data_block['dataset_id']!r}; drop the key or make it match"
        )
    merge(data_block, f"{data_path}:{dataset_id}")

    for key, value in parsed:
        merge({key: value}, OVERRIDE_SOURCE)

    cfg = build_config(
        expid, params, sources=sources, overrides=overrides, origin=f"expid {expid!r}"
    )
    cfg = dataclasses.replace(cfg, hash_check=_check_hash(cfg, allow_hash_mismatch))
    return cfg


def build_config(
    expid: str,
    params: dict[str, Any],
    *,
    sources: dict[str, str] | None = None,
    overrides: list[str] | None = None,
    origin: str | None = None,
) -> ExperimentConfig:
    """Validate a resolved flat params dict and split it into typed parts (reads no file).

    ``load_config`` and ``ExperimentConfig.from_dict`` both end here; a tuner can use it to
    check an expanded grid point before writing it out. ``hash_check`` is left at
    "not a tuner id" (``load_config`` sets it).
    """
    sources = {k: sources[k] for k in params if k in sources} if sources else {}
    for key in params:
        sources.setdefault(key, "<dict>")
    origin = origin or f"expid {expid!r}"
    problems: list[str] = []
    notices: list[str] = []

    def where(key: str) -> str:
        return sources.get(key, "<dict>")

    model_name = params.get("model")
    model_cls = _model_schema(model_name, "model" in params, where, problems)
    if "dataset_id" not in params:
        problems.append("no 'dataset_id' key: name the dataset block this experiment uses")
    _check_key_names(params, model_name, model_cls, where, problems, notices)
    resolved = _resolve_values(params, model_cls, where, problems)
    monitor_problem = _check_monitor(resolved, where)
    if monitor_problem:
        problems.append(monitor_problem)
    _check_model_keys(model_name, resolved, where, problems, notices)

    features: list[FeatureSpec] = []
    if "feature_cols" not in params:
        problems.append("no 'feature_cols': the dataset block must list the features")
    else:
        resolved["feature_cols"], features = _parse_features(
            params["feature_cols"], where("feature_cols"), problems, notices
        )
    label = LabelSpec()
    if "label_col" in params:
        label = _parse_label(params["label_col"], where("label_col"), problems)

    if problems:
        raise _fail(f"{origin} is not a valid config", problems)
    return _assemble(
        expid, resolved, features, label, model_cls, sources, overrides, notices, origin
    )


def _model_schema(
    model_name: Any, named: bool, where: Callable[[str], str], problems: list[str]
) -> type[ModelBase] | None:
    """The schema of the ``model:`` named (None, with a problem, when it names none)."""
    model_cls = MODEL_SCHEMAS.get(model_name) if isinstance(model_name, str) else None
    known_models = ", ".join(MODEL_SCHEMAS)
    if not named:
        problems.append(f"no 'model' key: name one of the known models ({known_models})")
    elif model_cls is None:
        problems.append(
            f"unknown model {_show(model_name)} (from {where('model')}); known models: "
            f"{known_models}{_did_you_mean(str(model_name), list(MODEL_SCHEMAS))}"
        )
    return model_cls


def _check_key_names(
    params: dict[str, Any],
    model_name: Any,
    model_cls: type[ModelBase] | None,
    where: Callable[[str], str],
    problems: list[str],
    notices: list[str],
) -> None:
    """Unknown keys (with the closest valid name), another model's keys, ignored FuxiCTR keys."""
    model_keys = (
        frozenset(field_names(model_cls))
        if model_cls
        else frozenset().union(*(field_names(c) for c in MODEL_SCHEMAS.values()))
    )
    valid_keys = _DATASET_KEYS | _TRAINER_KEYS | model_keys
    for key in params:
        if not isinstance(key, str):
            problems.append(f"key {key!r} (from {where(key)}) is not a name")
        elif key in IGNORED_KEYS:
            why = _WHY_IGNORED.get(key, "not used by mmctr")
            notices.append(f"ignoring FuxiCTR key {key!r} (from {where(key)}): {why}")
        elif key not in valid_keys:
            owners = [m for m, c in MODEL_SCHEMAS.items() if key in field_names(c)]
            if owners:
                problems.append(
                    f"key {key!r} (from {where(key)}) belongs to model {' / '.join(owners)}, "
                    f"not to {model_name}"
                )
            else:
                hint = _did_you_mean(key, sorted(valid_keys | IGNORED_KEYS))
                problems.append(f"unknown key {key!r} (from {where(key)}){hint}")


def _resolve_values(
    params: dict[str, Any],
    model_cls: type[ModelBase] | None,
    where: Callable[[str], str],
    problems: list[str],
) -> dict[str, Any]:
    """The declared keys checked against their field's type and value check; the resolved
    dict (numbers of float fields as floats)."""
    classes = [DatasetConfig, TrainerConfig] + ([model_cls] if model_cls is not None else [])
    declared = {k: v for c in classes for k, v in field_types(c).items()}
    checks = {k: v for c in classes for k, v in field_checks(c).items()}
    resolved: dict[str, Any] = {}
    for key, value in params.items():
        if key in ("feature_cols", "label_col") or key not in declared:
            resolved[key] = copy.deepcopy(value)
            continue
        annotation = declared[key]
        if not _type_ok(value, annotation):
            problems.append(
                f"{key!r} (from {where(key)}) must be {_type_name(annotation)}, got {_show(value)}"
            )
        elif value is not None and key in checks and not checks[key].ok(value):
            problems.append(
                f"{key!r} (from {where(key)}) must be {checks[key].must_be}, got {value!r}"
            )
        resolved[key] = coerce_numbers(copy.deepcopy(value), annotation)
    return resolved


def _assemble(
    expid: str,
    resolved: dict[str, Any],
    features: list[FeatureSpec],
    label: LabelSpec,
    model_cls: type[ModelBase],
    sources: dict[str, str],
    overrides: list[str] | None,
    notices: list[str],
    origin: str,
) -> ExperimentConfig:
    """The typed parts of a valid resolved dict (the dataset's features checked readable)."""

    def pick(cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        return {
            f.name: copy.deepcopy(resolved[f.name])
            for f in fields(cls)
            if f.name in resolved and f.name not in skip
        }

    dataset = DatasetConfig(
        **pick(DatasetConfig, skip=("feature_cols", "label_col")),
        feature_cols=features,
        label_col=label,
    )
    unreadable = check_feature_config(dataset)  # features the loader can read
    if unreadable:
        raise _fail(f"{origin} is not a valid config", unreadable)
    return ExperimentConfig(
        expid=expid,
        dataset=dataset,
        model=model_cls(**pick(model_cls)),
        trainer=TrainerConfig(**pick(TrainerConfig)),
        params=resolved,
        sources=sources,
        overrides=list(overrides or []),
        notices=notices,
    )


# ------------------------------------------------------------------------------ helpers


def _config_files(config_dir: Path, stem: str) -> list[Path]:
    """``<dir>/<stem>.yaml``, else every ``<dir>/<stem>/*.yaml`` (FuxiCTR's lookup)."""
    if not config_dir.is_dir():
        if config_dir.exists():
            raise ConfigError(
                f"config folder {str(config_dir)!r} is a file, not a folder (--config DIR: the "
                f"folder holding model_config.yaml; try {str(config_dir.parent)!r})"
            )
        raise ConfigError(f"config folder {str(config_dir)!r} does not exist (--config DIR)")
    single = config_dir / f"{stem}.yaml"
    if single.is_file():
        return [single]
    files = sorted((config_dir / stem).glob("*.yaml"))
    if not files:
        raise ConfigError(
            f"{config_dir} has no {stem}.yaml and no {stem}/*.yaml; a FuxiCTR config folder "
            "holds model_config.yaml (Base + one block per expid) and dataset_config.yaml "
            "(one block per dataset_id)"
        )
    return files


def _read_blocks(files: list[Path]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Top-level blocks of the files: name -> [(file, block), ...]."""
    blocks: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in files:
        data = load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of block names, got {_show(data)}"
            )
        for name, block in data.items():
            if block is None:
                block = {}
            if not isinstance(block, dict):
                raise ConfigError(
                    f"{path}: block {name!r} must be a mapping of keys, got {_show(block)}"
                )
            blocks.setdefault(str(name), []).append((path, block))
    return blocks


def _single(
    found: list[tuple[Path, dict[str, Any]]], what: str, name: str
) -> tuple[Path, dict[str, Any]]:
    if len(found) > 1:
        where = ", ".join(str(p) for p, _ in found)
        raise ConfigError(f"{what} {name!r} is defined in several files ({where}); keep one")
    return found[0]


def _pick_base(
    found: list[tuple[Path, dict[str, Any]]], exp_path: Path
) -> tuple[Path | None, dict[str, Any]]:
    """The Base block of the expid's own file, else the folder's only one."""
    for path, block in found:
        if path == exp_path:
            return path, block
    if len(found) > 1:
        where = ", ".join(str(p) for p, _ in found)
        raise ConfigError(
            f"several Base blocks ({where}) and none in {exp_path}: move the one this "
            "expid should use into its file"
        )
    if found:
        return found[0]
    return None, {}


def _unknown_name(what: str, name: str, available: list[str], files: list[Path]) -> ConfigError:
    where = ", ".join(str(p) for p in files)
    shown = ", ".join(available[:30]) + (
        f", ... ({len(available) - 30} more)" if len(available) > 30 else ""
    )
    return ConfigError(
        f"{what} {name!r} is not in {where}; available: {shown or '(none)'}"
        f"{_did_you_mean(name, available)}"
    )


def _did_you_mean(name: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _check_hash(cfg: ExperimentConfig, allow_mismatch: bool) -> str:
    m = TUNER_ID_RE.match(cfg.expid)
    if m is None:
        return HASH_NOT_TUNER_ID
    said, actual = m.group(3), experiment_hash(cfg.params)[:8]
    if said == actual:
        return HASH_OK
    if cfg.params.get("tuner") is None:  # e.g. FuxiCTR's tuner output, brought unchanged
        cfg.notices.append(
            f"expid {cfg.expid} has the form of a tuner id, but its hash is not that of its "
            f"parameters ({actual}) and its block has no 'tuner' key (mmctr's tuner writes "
            "one): taken as another tool's id (FuxiCTR's tuner), not checked"
        )
        return HASH_FOREIGN
    message = (
        f"expid {cfg.expid} says hash {said} but its parameters hash to {actual}: the config "
        "was edited by hand or overridden"
    )
    if not allow_mismatch:
        raise ConfigError(f"{message}; pass --allow-hash-mismatch to run anyway (recorded)")
    cfg.notices.append(f"{message}; running anyway (--allow-hash-mismatch)")
    return HASH_MISMATCH_ALLOWED


def _check_monitor(params: dict[str, Any], where: Any) -> str | None:
    monitor = params.get("monitor")
    metrics = params.get("metrics", TrainerConfig().metrics)
    if not isinstance(monitor, (str, dict)) or not isinstance(metrics, list):
        return None  # absent, or a type error already reported
    names = [monitor] if isinstance(monitor, str) else list(monitor)
    missing = [n for n in names if n not in metrics]
    if not missing:
        return None
    return (
        f"monitor (from {where('monitor')}) uses {', '.join(map(repr, missing))}, which "
        f"metrics {metrics} does not compute; add it to metrics or monitor one of them"
    )


def _check_model_keys(
    model: Any, params: dict[str, Any], where: Any, problems: list[str], notices: list[str]
) -> None:
    """Keys that would be accepted and then do nothing (PEERS: swallowed keys)."""
    if model in ("DIN", "DCNv2") and "hidden_activations" in params:
        used = (
            "dnn_activations, attention_hidden_activations" if model == "DIN" else "dnn_activations"
        )
        notices.append(
            f"'hidden_activations' (from {where('hidden_activations')}) has no effect on "
            f"{model}: its MLPs use {used}"
        )
    experts = params.get("cross_num_experts")
    if (
        model == "Transformer_DCN"
        and isinstance(experts, int)
        and experts > 1
        and params.get("cross_low_rank") is None
    ):
        problems.append(
            f"'cross_num_experts' (from {where('cross_num_experts')}) is {experts}, but "
            "experts exist only in the low-rank cross network: set cross_low_rank (e.g. 64) "
            "or drop cross_num_experts"
        )


def _parse_features(
    value: Any, source: str, problems: list[str], notices: list[str]
) -> tuple[list[dict[str, Any]], list[FeatureSpec]]:
    """Check feature_cols; expand ``name: [a, b]`` entries. -> (plain entries, specs)."""
    if not isinstance(value, list) or not value:
        problems.append(f"feature_cols (from {source}) must be a non-empty list of features")
        return copy.deepcopy(value), []
    spec_types = field_types(FeatureSpec)
    allowed = sorted(set(spec_types) | IGNORED_FEATURE_KEYS)
    plain: list[dict[str, Any]] = []
    specs: list[FeatureSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            problems.append(
                f"feature_cols[{i}] (from {source}) must be a mapping like "
                f"{{name: x, type: categorical, ...}}, got {_show(entry)}"
            )
            continue
        names = entry.get("name")
        names = names if isinstance(names, list) else [names]
        for name in names:
            where = f"feature_cols[{i}] {name!r} (from {source})"
            if not isinstance(name, str) or not name:
                problems.append(
                    f"feature_cols[{i}] (from {source}) needs a name, got {_show(name)}"
                )
                continue
            if name in seen:
                problems.append(f"{where}: feature {name!r} is listed twice")
            seen.add(name)
            item = {**copy.deepcopy(entry), "name": name}
            plain.append(item)
            ok = True
            for key, val in item.items():
                if key in IGNORED_FEATURE_KEYS:
                    notices.append(
                        f"ignoring FuxiCTR feature key {key!r} of feature {name!r} "
                        f"(from {source}): not used by mmctr"
                    )
                elif key not in spec_types:
                    ok = False
                    problems.append(
                        f"{where}: unknown feature key {key!r}{_did_you_mean(str(key), allowed)}"
                    )
                elif not _type_ok(val, spec_types[key]):
                    ok = False
                    problems.append(
                        f"{where}: {key!r} must be {_type_name(spec_types[key])}, got {_show(val)}"
                    )
            if "type" not in item:
                ok = False
                problems.append(f"{where}: no 'type' (one of {', '.join(FEATURE_TYPES)})")
            elif item["type"] not in FEATURE_TYPES:
                ok = False
                problems.append(
                    f"{where}: type {item['type']!r} is not one of {', '.join(FEATURE_TYPES)}"
                    f"{_did_you_mean(str(item['type']), list(FEATURE_TYPES))}"
                )
            if item.get("dtype", "int") not in FEATURE_DTYPES:
                ok = False
                problems.append(
                    f"{where}: dtype {item['dtype']!r} is not one of {', '.join(FEATURE_DTYPES)}"
                )
            for key in ("vocab_size", "max_len", "embedding_dim"):
                size = item.get(key)
                if isinstance(size, int) and not isinstance(size, bool) and size < 1:
                    ok = False
                    problems.append(f"{where}: {key} must be at least 1, got {size}")
            if ok:
                specs.append(FeatureSpec(**{k: v for k, v in item.items() if k in spec_types}))
    return plain, specs


def _parse_label(value: Any, source: str, problems: list[str]) -> LabelSpec:
    if isinstance(value, list):
        problems.append(
            f"label_col (from {source}) is a list: multi-task labels are not supported; "
            "give one {name: label, dtype: float}"
        )
        return LabelSpec()
    if not isinstance(value, dict):
        problems.append(
            f"label_col (from {source}) must be a mapping like {{name: label, dtype: float}}, "
            f"got {_show(value)}"
        )
        return LabelSpec()
    label_types = field_types(LabelSpec)
    ok = True
    for key, val in value.items():
        if key not in label_types:
            ok = False
            problems.append(
                f"label_col (from {source}): unknown key {key!r}"
                f"{_did_you_mean(str(key), list(label_types))}"
            )
        elif not _type_ok(val, label_types[key]):
            ok = False
            problems.append(
                f"label_col (from {source}): {key!r} must be {_type_name(label_types[key])}, "
                f"got {_show(val)}"
            )
    return LabelSpec(**value) if ok else LabelSpec()


def _type_ok(value: Any, annotation: Any) -> bool:
    """Does a YAML value fit a dataclass annotation? (an int fits a float; a bool fits
    neither int nor float)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item_type) for v in value)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _type_ok(k, key_type) and _type_ok(v, value_type) for k, v in value.items()
        )
    if is_dataclass(annotation):
        return isinstance(value, (dict, annotation))
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        k, v = typing.get_args(annotation)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: Any) -> str:
    """``str '128'``, ``list [1, 2]``, ``null`` — the YAML type and the value."""
    if value is None:
        return "null"
    kind = {dict: "mapping"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"
