"""Typed configuration objects: the schema every experiment is checked against.

A FuxiCTR experiment is one flat dict (``Base`` + expid block + dataset block). We keep that
YAML shape but split the resolved dict into typed parts, so that every key is known:

- :class:`DatasetConfig` with its :class:`FeatureSpec` list (the dataset block),
- :class:`TrainerConfig` (optimisation, evaluation, checkpointing, data loading),
- one model dataclass per ``model:`` name (:data:`MODEL_SCHEMAS`).

The field names are the YAML keys. Defaults follow FuxiCTR where it has one.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, NamedTuple

from mmctr.columns import HISTORY_COL

FEATURE_TYPES = ("meta", "categorical", "sequence", "embedding", "numeric")

#: Activation names mmctr builds itself (case-insensitive; models.layers.get_activation). As in
#: FuxiCTR, any other name of a ``torch.nn`` activation class ("SiLU", "ELU", ...) works too.
ACTIVATIONS = (
    "relu",
    "prelu",
    "leaky_relu",
    "leakyrelu",
    "sigmoid",
    "tanh",
    "gelu",
    "softmax",
    "dice",
)
#: names meaning "no activation" (an output activation only)
IDENTITY_ACTIVATIONS = ("none", "linear", "identity")
#: DCNv2 ``model_structure`` values (FuxiCTR's)
DCN_STRUCTURES = ("parallel", "stacked", "crossnet_only", "stacked_parallel")


def torch_activation_class(name: str) -> type | None:
    """The ``torch.nn`` activation class called ``name`` (exact case, as FuxiCTR looks it up),
    or None. Imports torch only for names outside :data:`ACTIVATIONS`."""
    import inspect

    import torch.nn as nn

    cls = getattr(nn.modules.activation, name, None)
    if not (isinstance(cls, type) and cls.__module__ == nn.modules.activation.__name__):
        return None  # also the names that module merely imports (Module, Parameter, ...)
    required = [  # MultiheadAttention is no activation: it needs arguments
        p
        for p in list(inspect.signature(cls).parameters.values())
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return None if required else cls


def is_activation(name: Any, identity_ok: bool = False) -> bool:
    """True for a name :func:`mmctr.models.layers.get_activation` builds."""
    if not isinstance(name, str):
        return False
    if name.lower() in ACTIVATIONS or (identity_ok and name.lower() in IDENTITY_ACTIVATIONS):
        return True
    return torch_activation_class(name) is not None


# ---------------------------------------------------------------- value checks of the keys
# Each config field carries its value check (``key(default, CHECK)``): the loader checks a
# value against it once the value's type is right, so a key is declared in one place.


class Check(NamedTuple):
    """A config key's value rule: ``ok(value)``, and what a value must be (the words of the
    error message: ``'batch_size' (from ...) must be at least 1, got 0``)."""

    ok: Callable[[Any], bool]
    must_be: str


def _parses(parse: Callable[[Any], Any], value: Any) -> bool:
    try:
        parse(value)
    except ValueError:
        return False
    return True


#: what the trainer computes on every evaluation (gAUC where a group column exists)
METRICS = ("logloss", "AUC", "gAUC")
MONITOR_MODES = ("max", "min")

POSITIVE = Check(lambda v: v >= 1, "at least 1")
NON_NEGATIVE = Check(lambda v: v >= 0, "0 or more")
DROPOUT = Check(lambda v: 0 <= v < 1, "in [0, 1)")
UNITS = Check(lambda v: all(u >= 1 for u in v), "a list of sizes >= 1")
ACTIVATION = Check(
    lambda v: is_activation(v),
    f"an activation: {', '.join(ACTIVATIONS)} (any case) or a torch.nn activation class name",
)
OUTPUT_ACTIVATION = Check(
    lambda v: is_activation(v, identity_ok=True), ACTIVATION.must_be + ", or none / linear"
)
REGULARIZER = Check(
    lambda v: _parses(parse_regularizer, v),
    "a finite non-negative number (L2), 'l1(x)', 'l2(x)' or 'l1_l2(x, y)'",
)
INITIALIZER = Check(
    lambda v: _parses(embedding_init_std, v),
    '"partial(nn.init.normal_, std=X)" (FuxiCTR\'s form) or "torch_default"',
)
METRIC_LIST = Check(
    lambda v: all(m in METRICS for m in v),
    f"a list of {', '.join(METRICS)} (the metrics mmctr computes; names are case-sensitive)",
)


def key(default: Any = MISSING, check: Check | None = None, *, factory: Any = MISSING) -> Any:
    """A config field: its default (or default ``factory``) and its value :class:`Check`."""
    metadata = {"check": check} if check is not None else {}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def field_checks(cls: type) -> MappingProxyType[str, Check]:
    """Field name -> its value :class:`Check`, for the fields that have one."""
    return MappingProxyType(
        {f.name: f.metadata["check"] for f in fields(cls) if "check" in f.metadata}
    )


@dataclass(frozen=True)
class FeatureSpec:
    """One entry of ``feature_cols``.

    ``source: item`` marks an item-side feature: it lives in ``item_info.parquet`` (row index ==
    item_id) and is looked up for the target item and every history item.
    """

    name: str
    type: str
    dtype: str = "int"
    active: bool = True
    vocab_size: int | None = None
    max_len: int | None = None
    source: str | None = None
    embedding_dim: int | None = None
    padding_idx: int | None = 0

    @property
    def is_item_side(self) -> bool:
        return self.source == "item"


@dataclass(frozen=True)
class LabelSpec:
    name: str = "label"
    dtype: str = "float"


@dataclass(frozen=True)
class DatasetConfig:
    """The dataset block. Paths are used as written (relative paths are relative to the
    current directory, as in FuxiCTR)."""

    dataset_id: str
    data_root: str = "./data/"
    data_format: str = key(
        "parquet",
        Check(
            lambda v: v == "parquet",
            "'parquet' (mmctr reads parquet files; convert csv/h5 once with pandas.to_parquet)",
        ),
    )
    train_data: str | None = None
    valid_data: str | None = None
    test_data: str | None = None
    item_info: str | None = None
    rebuild_dataset: bool = False
    feature_cols: list[FeatureSpec] = field(default_factory=list)
    label_col: LabelSpec = field(default_factory=LabelSpec)

    def feature(self, name: str) -> FeatureSpec:
        for f in self.feature_cols:
            if f.name == name:
                return f
        raise KeyError(f"feature {name!r} is not in feature_cols of dataset {self.dataset_id!r}")

    @property
    def active_features(self) -> list[FeatureSpec]:
        return [f for f in self.feature_cols if f.active]

    @property
    def item_features(self) -> list[FeatureSpec]:
        """Active features looked up in item_info (target item and history items)."""
        return [f for f in self.active_features if f.is_item_side]

    @property
    def side_features(self) -> list[FeatureSpec]:
        """Active per-row model inputs that are not item-side and not meta (likes/views...)."""
        return [f for f in self.active_features if not f.is_item_side and f.type != "meta"]


EMBEDDING_INITIALIZER = "partial(nn.init.normal_, std=1e-4)"
TORCH_DEFAULT_INIT = "torch_default"
_NORMAL_INIT = re.compile(
    r"^\s*partial\(\s*(?:torch\.)?nn\.init\.normal_\s*,\s*std\s*=\s*([0-9.eE+-]+)\s*\)\s*$"
)


def embedding_init_std(text: str) -> float | None:
    """FuxiCTR's ``embedding_initializer`` string -> the normal std (None: PyTorch's own
    init, ``"torch_default"``). Raises ValueError for any other form."""
    if text == TORCH_DEFAULT_INIT:
        return None
    m = _NORMAL_INIT.match(str(text))
    if m is None:
        raise ValueError(
            f"{text!r} is not an embedding_initializer mmctr knows: use "
            f'"partial(nn.init.normal_, std=X)" (FuxiCTR\'s form) or "{TORCH_DEFAULT_INIT}"'
        )
    std = float(m.group(1))
    if not std > 0:
        raise ValueError(f"embedding_initializer: std must be positive, got {std}")
    return std


@dataclass(frozen=True)
class TrainerConfig:
    """Everything that is not the model: loss, optimisation, evaluation, checkpoints, loading."""

    loss: str = "binary_crossentropy"
    metrics: list[str] = key(check=METRIC_LIST, factory=lambda: ["logloss", "AUC"])
    task: str = "binary_classification"
    optimizer: str = "adam"
    learning_rate: float = key(1e-3, Check(lambda v: v > 0, "positive"))
    weight_decay: float = key(0.0, NON_NEGATIVE)
    embedding_regularizer: float | str | None = key(0.0, REGULARIZER)
    net_regularizer: float | str | None = key(0.0, REGULARIZER)
    batch_size: int = key(1024, POSITIVE)
    eval_batch_size: int | None = key(None, POSITIVE)
    epochs: int = key(100, POSITIVE)
    shuffle: bool = True
    seed: int = 2025
    monitor: str | dict[str, float] = "AUC"
    monitor_mode: str = key(
        "max", Check(lambda v: v in MONITOR_MODES, "one of " + ", ".join(MONITOR_MODES))
    )
    early_stop_patience: int = key(2, NON_NEGATIVE)
    reduce_lr_on_plateau: bool = True
    lr_decay_factor: float = key(0.1, Check(lambda v: 0 < v <= 1, "in (0, 1]"))
    min_lr: float = key(1e-6, NON_NEGATIVE)
    max_gradient_norm: float = 10.0
    accumulation_steps: int = key(1, POSITIVE)
    eval_steps: int | None = key(None, POSITIVE)
    group_id: str | None = None
    save_best_only: bool = True
    model_root: str = "./checkpoints/"
    num_workers: int = key(0, NON_NEGATIVE)
    verbose: int = 1
    # precision: "auto" = bf16 autocast on CPUs with AMX/AVX512-BF16 and on CUDA GPUs with bf16
    bf16: bool | str = key(
        "auto", Check(lambda v: isinstance(v, bool) or v == "auto", 'True, False or "auto"')
    )
    # data loading
    max_len: int | None = key(None, POSITIVE)
    trim_padding: bool = True
    bucket_by_length: bool = False
    data_on_device: bool = False
    pin_memory: bool = True
    # one CUDA graph of the whole training step (one GPU, accumulation_steps 1); see
    # mmctr/training/graphs.py. Off until measured faster on a GPU (scripts/gpu_check.py).
    cuda_graphs: bool = False
    # the tuner file that wrote this experiment (run_param_tuner.py sets it): its expid's hash
    # is ours and is checked on load; FuxiCTR's tuner ids carry no such key and are not
    tuner: str | None = None
    # fit the popularity and logistic-regression baselines beside the model (metrics.json
    # "baselines"; mmctr/training/baselines.py)
    baselines: bool = True
    # TensorBoard event files in the run folder (mmctr/training/tracking.py)
    tensorboard: bool = True
    # CPU threads of a CPU run (torch.set_num_threads); None = the cores this process may use,
    # shared among the CPU runs of a tuner (mmctr/threads.py: default_num_threads)
    num_threads: int | None = key(None, POSITIVE)


@dataclass(frozen=True)
class ModelBase:
    """Keys shared by every model."""

    model: str = ""
    embedding_dim: int = key(10, POSITIVE)  # FuxiCTR's default; every challenge config sets 64
    hidden_activations: str = key("relu", ACTIVATION)
    net_dropout: float = key(0.0, DROPOUT)
    batch_norm: bool = False
    # width of the learnable projection of frozen ``embedding`` features (item_emb_d128);
    # None = the feature's embedding_dim, as FuxiCTR does
    pretrained_proj_dim: int | None = None
    # FuxiCTR's: N(0, 1e-4) embedding tables, Xavier-normal Linear layers
    # (mmctr.models.base.CTRModel.reset_parameters); "torch_default" keeps PyTorch's
    embedding_initializer: str = key(EMBEDDING_INITIALIZER, INITIALIZER)


@dataclass(frozen=True)
class TransformerDCNConfig(ModelBase):
    model: str = "Transformer_DCN"
    dcn_cross_layers: int = key(3, NON_NEGATIVE)
    dcn_hidden_units: list[int] = key(check=UNITS, factory=lambda: [1024, 512, 256])
    mlp_hidden_units: list[int] = key(check=UNITS, factory=lambda: [64, 32])
    num_heads: int = key(1, POSITIVE)
    transformer_layers: int = key(2, NON_NEGATIVE)
    transformer_dropout: float = key(0.2, DROPOUT)
    dim_feedforward: int = key(256, POSITIVE)
    first_k_cols: int = key(16, POSITIVE)
    concat_max_pool: bool = True
    # CrossNetV2 variant: None = full rank (as the peers); an int = low-rank mixture (DCN-Mix)
    cross_low_rank: int | None = key(None, POSITIVE)
    cross_num_experts: int = key(1, POSITIVE)


@dataclass(frozen=True)
class TransformerDCNTAConfig(TransformerDCNConfig):
    """Transformer_DCN plus a target-aware read-out (mmctr/models/transformer_dcn_ta.py)."""

    model: str = "Transformer_DCN_TA"
    interest_heads: int = key(4, POSITIVE)
    interest_head_dim: int = key(16, POSITIVE)
    recency_buckets: int = key(32, POSITIVE)
    # fixed similarities of each history item with the target: the share of the target's
    # item_tags it carries, the cosine of the frozen item_emb_d128 (ItemEncoder.match)
    interest_match: bool = True
    # probability of zeroing an item-id embedding while training (0 = off)
    id_dropout: float = key(0.0, DROPOUT)
    # probability of dropping each history item while training (0 = off)
    history_dropout: float = key(0.0, DROPOUT)


@dataclass(frozen=True)
class DINConfig(ModelBase):
    model: str = "DIN"
    dnn_hidden_units: list[int] = key(check=UNITS, factory=lambda: [512, 128, 64])
    dnn_activations: str = key("relu", ACTIVATION)
    attention_hidden_units: list[int] = key(check=UNITS, factory=lambda: [64])
    attention_hidden_activations: str = key("Dice", ACTIVATION)
    attention_output_activation: str | None = key(None, OUTPUT_ACTIVATION)
    attention_dropout: float = key(0.0, DROPOUT)
    din_use_softmax: bool = False


@dataclass(frozen=True)
class DCNv2Config(ModelBase):
    model: str = "DCNv2"
    model_structure: str = key(
        "parallel", Check(lambda v: v in DCN_STRUCTURES, "one of " + ", ".join(DCN_STRUCTURES))
    )
    use_low_rank_mixture: bool = False
    low_rank: int = key(32, POSITIVE)
    num_experts: int = key(4, POSITIVE)
    num_cross_layers: int = key(3, NON_NEGATIVE)
    stacked_dnn_hidden_units: list[int] = key(check=UNITS, factory=list)
    # FuxiCTR's default is [] too, which its parallel structure cannot build (it reads the
    # last width); a usable default instead
    parallel_dnn_hidden_units: list[int] = key(check=UNITS, factory=lambda: [1024, 512, 256])
    dnn_activations: str = key("relu", ACTIVATION)


MODEL_SCHEMAS: dict[str, type[ModelBase]] = {
    "Transformer_DCN": TransformerDCNConfig,
    "Transformer_DCN_TA": TransformerDCNTAConfig,
    "DIN": DINConfig,
    "DCNv2": DCNv2Config,
}

# Keys FuxiCTR accepts that we deliberately ignore (accepted with a one-line notice).
IGNORED_KEYS = frozenset(
    {
        "pickle_feature_encoder",
        "debug_mode",
        "use_features",
        "feature_specs",
        "feature_config",
        "gpu",
        "ckpt_dir",
    }
)


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


@functools.cache
def field_types(cls: type) -> MappingProxyType[str, Any]:
    """Field name -> resolved annotation (``int``, ``float | str | None``, ``list[int]``...).

    The loader checks YAML values against these, and the experiment hash uses them to read
    ``1`` and ``1.0`` of a float field as the same number.
    """
    hints = typing.get_type_hints(cls)
    return MappingProxyType({f.name: hints[f.name] for f in fields(cls)})


def as_plain(obj: Any) -> Any:
    """Dataclass tree -> plain YAML/JSON-able python (dicts, lists, scalars)."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj):
        return asdict(obj)
    return obj


_REG_RE = re.compile(r"^\s*(l1|l2|l1_l2)\s*\(([^()]*)\)\s*$")


def parse_regularizer(value: float | str | None) -> list[tuple[int, float]]:
    """FuxiCTR's regulariser spellings -> ``[(p, lambda), ...]``, the penalty being
    ``lambda / p * ||W||_p^p`` per parameter: a number is L2 (``1.e-5``), or ``"l1(x)"``,
    ``"l2(x)"``, ``"l1_l2(x, y)"``; 0, None and "" mean none. Raises ValueError otherwise."""
    if value is None or value == "":
        return []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        pairs = [(2, float(value))]
    elif isinstance(value, str):
        m = _REG_RE.match(value)
        try:
            if m is None:
                pairs = [(2, float(value))]  # a number written as a string
            else:
                lambdas = [float(x) for x in m.group(2).split(",")]
                norms = [1, 2] if m.group(1) == "l1_l2" else [int(m.group(1)[1])]
                if len(lambdas) != len(norms):
                    raise ValueError
                pairs = list(zip(norms, lambdas))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a regulariser: use a number (L2), 'l1(x)', 'l2(x)' or "
                "'l1_l2(x, y)'"
            ) from None
    else:
        raise ValueError(f"{value!r} is not a regulariser")
    if any(not math.isfinite(lam) or lam < 0 for _, lam in pairs):
        raise ValueError(f"{value!r}: regulariser weights must be finite and non-negative")
    return [(p, lam) for p, lam in pairs if lam > 0]


def check_feature_config(dataset: DatasetConfig) -> list[str]:
    """Problems of ``feature_cols`` that the loader cannot read (empty list = OK): a per-row
    (not ``source: item``) feature must be categorical or numeric, and the user history
    ``item_seq`` must be declared ``type: meta``."""
    problems = []
    where = f"dataset '{dataset.dataset_id}': feature_cols"
    for f in dataset.active_features:
        if f.is_item_side:
            continue
        if f.type in ("sequence", "embedding"):
            problems.append(
                f"{where}: feature '{f.name}' has type {f.type} without `source: item`; per-row "
                f"features must be categorical or numeric (item-side sequence/embedding "
                f"features need `source: item`), and the user history '{HISTORY_COL}' must be "
                "declared `type: meta`"
            )
        elif f.name == HISTORY_COL and f.type != "meta":
            problems.append(
                f"{where}: feature '{f.name}' is the user history read by the loader and must "
                f"be declared `type: meta` (found type {f.type})"
            )
    return problems
