"""Run configuration: one TOML file mapped onto dataclasses.

The defaults are the paper's settings (PriMaPs-EM on Cityscapes with DINO
ViT-S/8).  Precedence, lowest first: the defaults, the config file, the
command line's ``--set section.key=value`` overrides in the order given.
Unknown keys and values of the wrong type are a `ConfigError` naming the key.

Packaged configs (``primaps/configs/*.toml``) are found by name
(``cityscapes_dino_vits8``), any other config by its path.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = ["Config", "ConfigError", "RunConfig", "DataConfig", "BackboneConfig",
           "MasksConfig", "EMConfig", "EvalConfig", "load_config", "packaged_configs",
           "dumps"]


class ConfigError(ValueError):
    """A config that cannot be used: unknown key, wrong type, bad value."""


@dataclass
class RunConfig:
    """Where results go and what makes a run reproducible."""

    out: str = "primaps-run"  #: folder of the run's stores, checkpoint and reports
    seed: int = 0  #: seed of the shuffling, flips and generated data
    threads: int = 0  #: thread pool size (0: OMP_NUM_THREADS, else all cores)
    features: str = ""  #: run folder whose features/ and labels/ to use ("": run.out)


@dataclass
class DataConfig:
    """The data set (docs/method.md §1.5), or the generated street scenes (1.6)."""

    dataset: str = "cityscapes"  #: cityscapes | cocostuff | potsdam | street
    root: str = ""  #: folder in the data set's standard layout
    train_split: str = "train"
    val_split: str = "val"
    resize: int = 320  #: short side resized to this (322 for patch-14 backbones)
    crop: int = 320  #: centre crop (322 for patch-14 backbones)
    limit: int = 0  #: use only the first `limit` images of each split (0: all)
    n_train: int = 200  #: street: training images
    n_val: int = 50  #: street: validation images
    size: int = 160  #: street: label resolution (features at size / 4)


@dataclass
class BackboneConfig:
    """How images become features (``primaps extract``)."""

    name: str = "dino_vits8"  #: a primaps.backbones name (needs the torch extra)
    weights: str = ""  #: local checkpoint; "" looks in $PRIMAPS_WEIGHTS
    callable: str = ""  #: "module:function" turning (B, H, W, 3) uint8 into (B, C, h, w)
    batch_size: int = 8
    flip: bool = True  #: average with the flipped image's features, as the original
    device: str = "cpu"
    dtype: str = "float16"  #: feature store dtype: float16 | float32
    shard_size: int = 128  #: images per feature store shard
    layout: str = ""  #: of the callable's output: "" (B, C, h, w), checked | nchw | nhwc | tokens
    grid: int = 0  #: patch grid side of layout = "tokens" (0: the square grid)


@dataclass
class MasksConfig:
    """PriMaPs mask proposals (docs/method.md §1.1, ``primaps pseudo``)."""

    threshold: float = 0.4
    stop_fraction: float = 0.95
    gain: float = 10.0
    median_size: int = 3
    max_masks: int = 0  #: 0: no bound
    crf: bool = True  #: refine with the dense CRF where the images are at hand
    batch_size: int = 64  #: images per call


@dataclass
class EMConfig:
    """PriMaPs-EM (docs/method.md §1.2, ``primaps fit``)."""

    n_classes: int = 0  #: 0: the data set's number of classes
    lr: float = 5e-3
    focal_gamma: float = 2.0
    ema_decay: float = 0.98
    ema_every: int = 10
    warmup_epochs: int = 2
    epochs: int = 50
    batch_size: int = 32
    hflip: bool = True
    baseline: bool = False  #: also fit K-means alone for warmup + EM epochs
    ablation_no_masks: bool = False  #: also fit EM with the teacher's own argmax


@dataclass
class EvalConfig:
    """Evaluation (docs/method.md §1.3, ``primaps evaluate``)."""

    probe: bool = False  #: also train and score the supervised linear probe
    probe_epochs: int = 10
    crf: bool = True  #: also report "with CRF" rows where the images are at hand
    batch_size: int = 32
    pictures: bool = True  #: panels.png and confusion.png (needs matplotlib)


@dataclass
class Config:
    """The whole configuration, one dataclass per TOML table."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    em: EMConfig = field(default_factory=EMConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> Dict[str, Dict[str, Any]]:
        return dataclasses.asdict(self)


DATASETS = ("cityscapes", "cocostuff", "potsdam", "street")


def _sections() -> Dict[str, type]:
    return {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def _field_types(section_cls: type) -> Dict[str, str]:
    return {f.name: f.type if isinstance(f.type, str) else f.type.__name__
            for f in fields(section_cls)}


def _coerce(key: str, kind: str, value: Any, where: str) -> Any:
    """`value` checked against the field type `kind` (an int is a valid float)."""
    ok = (isinstance(value, bool) if kind == "bool" else
          isinstance(value, int) and not isinstance(value, bool) if kind == "int" else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind == "float"
          else isinstance(value, str))
    if not ok:
        raise ConfigError(f"{key}{where} must be {'an' if kind == 'int' else 'a'} {kind}, "
                          f"got {value!r} ({type(value).__name__})")
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}{where} must be finite, got {value}")
    return value


def _apply(cfg: Config, data: Dict[str, Any], where: str) -> None:
    sections = _sections()
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"unknown section [{name}]{where}; known: "
                              f"{', '.join(sections)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}{where} must be a table [{name}], got {table!r}")
        sec = getattr(cfg, name)
        types = _field_types(type(sec))
        for key, value in table.items():
            full = f"{name}.{key}"
            if key not in types:
                raise ConfigError(f"unknown key {full}{where}; known in [{name}]: "
                                  f"{', '.join(types)}")
            setattr(sec, key, _coerce(full, types[key], value, where))


def _parse_value(kind: str, text: str) -> Any:
    """A command-line value: TOML syntax (1e-3, true, "x"), bare text for strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if kind == "str":
            return text
        raise ConfigError(f"cannot read {text!r} as {'an' if kind == 'int' else 'a'} "
                          f"{kind}") from None


def apply_override(cfg: Config, item: str) -> None:
    """Apply one ``section.key=value`` override."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must have the form section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(f"override key {key!r} must have the form section.key, "
                          "e.g. em.epochs")
    name, sub = key.split(".")
    sections = _sections()
    if name not in sections:
        raise ConfigError(f"unknown key {key} (unknown section [{name}]; known: "
                          f"{', '.join(sections)})")
    types = _field_types(sections[name])
    if sub not in types:
        raise ConfigError(f"unknown key {key}; known in [{name}]: {', '.join(types)}")
    kind = types[sub]
    try:
        value = _parse_value(kind, text.strip())
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if kind == "str" and not isinstance(value, str):
        value = text.strip()  # e.g. data.root=2024 is the folder "2024"
    _apply(cfg, {name: {sub: value}}, " (command line)")


def validate(cfg: Config) -> Config:
    """Check values that every stage relies on; returns `cfg`."""
    d = cfg.data
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, "
                          f"got {d.dataset!r}")
    positive = [("data.resize", d.resize), ("data.crop", d.crop), ("data.n_train", d.n_train),
                ("data.n_val", d.n_val), ("data.size", d.size),
                ("backbone.batch_size", cfg.backbone.batch_size),
                ("backbone.shard_size", cfg.backbone.shard_size),
                ("masks.batch_size", cfg.masks.batch_size), ("em.batch_size", cfg.em.batch_size),
                ("em.ema_every", cfg.em.ema_every), ("eval.batch_size", cfg.eval.batch_size)]
    nonneg = [("run.seed", cfg.run.seed), ("run.threads", cfg.run.threads),
              ("data.limit", d.limit), ("masks.max_masks", cfg.masks.max_masks),
              ("masks.median_size", cfg.masks.median_size), ("em.n_classes", cfg.em.n_classes),
              ("em.warmup_epochs", cfg.em.warmup_epochs), ("em.epochs", cfg.em.epochs),
              ("eval.probe_epochs", cfg.eval.probe_epochs)]
    for k, v in positive:
        if v < 1:
            raise ConfigError(f"{k} must be >= 1, got {v}")
    for k, v in nonneg:
        if v < 0:
            raise ConfigError(f"{k} must be >= 0, got {v}")
    if d.dataset == "street" and d.size % 4:
        raise ConfigError(f"data.size must be a multiple of 4, got {d.size}")
    if cfg.backbone.dtype not in ("float16", "float32"):
        raise ConfigError(f"backbone.dtype must be float16 or float32, got "
                          f"{cfg.backbone.dtype!r}")
    if cfg.backbone.layout not in ("", "nchw", "nhwc", "tokens"):
        raise ConfigError("backbone.layout must be \"\", \"nchw\", \"nhwc\" or \"tokens\", "
                          f"got {cfg.backbone.layout!r}")
    if cfg.backbone.grid < 0 or (cfg.backbone.grid and cfg.backbone.layout != "tokens"):
        raise ConfigError("backbone.grid must be 0, or >= 1 with backbone.layout = \"tokens\", "
                          f"got {cfg.backbone.grid}")
    if cfg.backbone.callable and ":" not in cfg.backbone.callable:
        raise ConfigError("backbone.callable must have the form 'module:function', got "
                          f"{cfg.backbone.callable!r}")
    m = cfg.masks
    if not 0.0 <= m.threshold <= 1.0:
        raise ConfigError(f"masks.threshold must lie in [0, 1], got {m.threshold}")
    if not 0.0 < m.stop_fraction <= 1.0:
        raise ConfigError(f"masks.stop_fraction must lie in (0, 1], got {m.stop_fraction}")
    if m.gain <= 0:
        raise ConfigError(f"masks.gain must be > 0, got {m.gain}")
    e = cfg.em
    if e.lr <= 0:
        raise ConfigError(f"em.lr must be > 0, got {e.lr}")
    if e.focal_gamma < 0:
        raise ConfigError(f"em.focal_gamma must be >= 0, got {e.focal_gamma}")
    if not 0.0 <= e.ema_decay <= 1.0:
        raise ConfigError(f"em.ema_decay must lie in [0, 1], got {e.ema_decay}")
    if e.n_classes > 255:
        raise ConfigError(f"em.n_classes must be <= 255, got {e.n_classes}")
    return cfg


# ----------------------------------------------------------------- files


def packaged_configs() -> Dict[str, str]:
    """Names of the packaged configs and their first comment line."""
    out = {}
    for entry in sorted(resources.files("primaps.configs").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            first = entry.read_text(encoding="utf-8").splitlines()[:1]
            out[entry.name[:-5]] = first[0].lstrip("# ").strip() if first else ""
    return out


def _read(name_or_path: str) -> Tuple[Dict[str, Any], str]:
    """The TOML table of a packaged config name or a file path, and its label."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        label = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{label} is not UTF-8 text (byte {e.start}: {e.reason}); TOML "
                              "files are UTF-8: convert it, e.g. iconv -f latin1 -t utf-8") from None
        except OSError as e:
            raise ConfigError(f"cannot read the config file {label}: {e.strerror or e}") from None
    else:
        stem = name_or_path[:-5] if name_or_path.endswith(".toml") else name_or_path
        names = packaged_configs()
        if stem not in names or "/" in name_or_path:
            raise ConfigError(f"no config file {name_or_path!r} and no packaged config of "
                              f"that name; packaged: {', '.join(names)}")
        text = (resources.files("primaps.configs") / f"{stem}.toml").read_text(encoding="utf-8")
        label = f"packaged config {stem}"
    try:
        return tomllib.loads(text), label
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label} is not valid TOML: {e}") from None


def load_config(name_or_path: Optional[str] = None,
                overrides: Iterable[str] = ()) -> Config:
    """The effective config: defaults, then the file, then the overrides.

    Parameters
    ----------
    name_or_path : str, optional
        A TOML file, or the name of a packaged config (`packaged_configs`).
    overrides : iterable of str
        ``section.key=value`` items, applied in order (values in TOML
        syntax; strings may be bare).

    Raises
    ------
    ConfigError
        Unknown sections or keys, values of the wrong type or range.
    """
    cfg = Config()
    if name_or_path:
        data, label = _read(name_or_path)
        _apply(cfg, data, f" in {label}")
    for item in overrides:
        apply_override(cfg, item)
    return validate(cfg)


def config_from_dict(data: Dict[str, Any]) -> Config:
    """A Config from a dict of tables (as `Config.to_dict` gives)."""
    cfg = Config()
    _apply(cfg, data, "")
    return validate(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dumps(cfg: Config) -> str:
    """The config as TOML text (what `load_config` reads back)."""
    lines: List[str] = []
    for name, table in cfg.to_dict().items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for k, v in table.items():
            lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
