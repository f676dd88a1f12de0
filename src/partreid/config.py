"""Typed run configuration: YAML files with ``base:`` inheritance and ``key=value`` overrides.

Every section is a dataclass; a key that no section defines is an error that lists the valid
keys. The ``model:`` section is checked against the chosen model's keyword options and each
``losses:`` entry against its loss function, so a typo never passes silently.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .data.transforms import TransformsConfig
from .errors import PartreidError
from .losses import LossComputer
from .models import list_models, model_options


class ConfigError(PartreidError, ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class DataConfig:
    name: str = "synthetic"  # data set name (see partreid.data.list_datasets())
    root: str = "data/synthetic"  # its folder
    options: Dict[str, Any] = field(default_factory=dict)  # data-set specific options
    test: List[Dict[str, Any]] = field(
        default_factory=list
    )  # extra test sets: [{name, root, options}]
    verify_images: bool = False  # decode every image once at start (reports all unreadable files)


@dataclass
class InputConfig:
    height: int = 384
    width: int = 128
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class SamplerConfig:
    p: int = 16  # identities per batch
    k: int = 4  # images per identity
    num_workers: int = 2  # data loading processes (0 = in the main process)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_mult: Dict[str, float] = field(default_factory=dict)  # {regex on param name: lr multiplier}


@dataclass
class ScheduleConfig:
    epochs: int = 120
    warmup: str = "none"  # none | linear | exp
    warmup_epochs: int = 0
    warmup_start_lr: float = 1e-5  # absolute lr at the first warm-up step
    milestones: List[int] = field(default_factory=lambda: [40, 90])
    gamma: float = 0.1


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (CUDA only; ignored on the CPU)
    eval_period: int = 0  # evaluate every N epochs (0 = only at the end)
    checkpoint_period: int = 1  # write last.pth every N epochs
    log_period: int = 20  # iterations between log lines
    max_iters_per_epoch: int = 0  # 0 = a full pass of the sampler
    tensorboard: bool = True  # write TensorBoard logs when tensorboard is installed
    progress: bool = True  # tqdm progress bars
    grad_clip: float = 0.0  # max grad norm (0 = off)
    checkpoint_every_iters: int = 0  # also checkpoint every N iterations (0 = at epoch ends only)
    keep_checkpoints: int = 3  # step checkpoints kept in OUTPUT/checkpoints/ (0 = last.pth only)
    best_metric: str = "mAP"  # best.pth: the checkpoint with the highest value (eval_period > 0)
    nonfinite: str = "stop"  # a NaN/inf loss: stop (last good checkpoint kept) | skip the step
    # --- speed switches (see engine/fastpath.py) ---
    amp_dtype: str = "bfloat16"  # autocast dtype: bfloat16 | float16 (float16 + GradScaler)
    channels_last: bool = False  # model and input batches in channels_last memory format (CUDA)
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark (fixed input size: faster convs)
    compile: bool = False  # torch.compile the model (first steps slower while compiling)
    cache_images: bool = False  # decode the training images once into a uint8 HxW tensor in RAM
    device_augment: bool = False  # augmentations batched on the device (needs cache_images)
    sync_bn: bool = False  # DDP: SyncBatchNorm (BN statistics over the global batch)
    dist_timeout_s: float = 600.0  # DDP: a collective waiting longer than this stops the run


@dataclass
class RobustnessConfig:
    """``eval.robustness``: the test repeated with altered queries (partreid.data.occlusion)."""

    enabled: bool = False  # run the sweep after the clean evaluation
    kinds: List[str] = field(  # alteration kinds (see partreid.data.occlusion.KINDS)
        default_factory=lambda: [
            *(f"person_{p}" for p in ("bottom", "top", "side", "random")),
            *(f"clutter_{p}" for p in ("bottom", "top", "side", "random")),
            "keep_top",
            "keep_bottom",
        ]
    )
    severities: List[float] = field(  # fraction of the crop lost (occluded area / height cut)
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5]
    )
    seed: int = 0  # alterations are seeded per image from this seed
    alter_gallery: bool = False  # alter the gallery images too (re-extracted per point)
    num_examples: int = 2  # queries shown in the strip of altered examples (0 = none)


@dataclass
class EvalConfig:
    batch_size: int = 128
    flip: bool = True  # average with the horizontally flipped image's feature
    distance: str = "euclidean"  # euclidean | cosine
    normalize: bool = False  # L2-normalise features before the distance
    rerank: bool = False  # k-reciprocal re-ranking (Zhong et al. 2017)
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    query_expansion: str = "none"  # none | average | alpha
    qe_k: int = 5
    qe_alpha: float = 3.0
    max_rank: int = 50
    num_visualize: int = 8  # queries drawn in the ranked-list picture (0 = none)
    cuhk03_metric: bool = False  # also the classic single-gallery-shot CUHK03 CMC
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)  # occlusion sweep


@dataclass
class Config:
    output_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    input: InputConfig = field(default_factory=InputConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: Dict[str, Any] = field(default_factory=lambda: {"name": "bot"})
    losses: List[Dict[str, Any]] = field(
        default_factory=lambda: [
            {"type": "cross_entropy", "output": "logits", "weight": 1.0},
            {"type": "triplet", "output": "triplet", "weight": 1.0, "margin": 0.3},
        ]
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Deep merge: dicts merge key by key, everything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str, _seen: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Read a config file and the chain of files its ``base:`` keys name, merged."""
    path = os.path.abspath(path)
    seen = list(_seen or [])
    if path in seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join(seen + [path])}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    bases = data.pop("base", None)
    if bases is None:
        return data
    merged: Dict[str, Any] = {}
    for b in [bases] if isinstance(bases, str) else bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = _merge(merged, read_yaml(bpath, seen + [path]))
    return _merge(merged, data)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["model.name=cgpn", "optim.lr=0.1"]`` -> nested dict (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field's declared type."""
    tname = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if value is None:
        return None
    if tname in ("int",):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tname in ("float",):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tname in ("bool",):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tname in ("str",):
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tname.startswith("List"):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tname.startswith("Dict"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _build_section(cls, data: Dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[f'{where}.{k}' if where else k for k in unknown]}; "
            f"valid keys{' of ' + where if where else ''}: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = known[name]
        sub = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        ):
            sub_cls = (
                type(f.default_factory())
                if f.default_factory is not dataclasses.MISSING
                else type(f.default)
            )
            kwargs[name] = _build_section(sub_cls, value, sub)
        else:
            kwargs[name] = _coerce(value, f.type, sub)
    return cls(**kwargs)


def _check_model_and_losses(cfg: Config) -> None:
    name = cfg.model.get("name")
    if name not in list_models():
        raise ConfigError(f"model.name: unknown model {name!r}; registered: {list_models()}")
    valid = model_options(name)
    unknown = sorted(set(cfg.model) - set(valid) - {"name"})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {['model.' + k for k in unknown]} for model "
            f"{name!r}; valid keys of model: {sorted(['name'] + list(valid))}"
        )
    if not isinstance(cfg.losses, list) or not cfg.losses:
        raise ConfigError("losses: expected a non-empty list of loss terms")
    try:
        LossComputer(cfg.losses)
    except (KeyError, ValueError) as exc:
        raise ConfigError(str(exc).strip('"')) from None


def build_config(data: Dict[str, Any]) -> Config:
    """Validate a merged config mapping and return a :class:`Config`."""
    cfg = _build_section(Config, data, "")
    _check_model_and_losses(cfg)
    return cfg


def load_config(
    path: Optional[str] = None, overrides: Sequence[str] = (), base: Optional[Dict[str, Any]] = None
) -> Config:
    """Load ``path`` (with its ``base:`` chain) or start from the mapping ``base`` (e.g. a
    checkpoint's saved config), apply ``key=value`` overrides, validate."""
    data = read_yaml(path) if path else copy.deepcopy(base or {})
    data = _merge(data, parse_overrides(overrides))
    return build_config(data)


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
