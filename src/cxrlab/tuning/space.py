"""Search spaces: which `TrainConfig` settings a search varies, and over what, read from YAML.

    lr: {low: 1.0e-4, high: 3.0e-3, log: true}   # a range (floats; ints when both ends are ints)
    batch_size: [16, 32]                         # a list of choices
    model: seed-cnn                              # a single value: fixed for every trial

Keys are TrainConfig or DataConfig settings, `augment` (on/off), `augment.NAME` (one augmentation
range, e.g. augment.rotation) or `augment_strength` (every augmentation range of the base config
times this factor). Settings that choose the data, the split or the machine cannot be searched.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import AugmentConfig, DataConfig, TrainConfig, with_overrides
from ..errors import ConfigError

PRESETS_DIR = Path(__file__).parent / "spaces"
# what a search must never vary: the data and its split (every trial is scored on the same validation
# patients), where it runs, and settings that are not about the model's quality
FIXED_KEYS = {"source", "positive", "negative", "images_dir", "split_file", "split_scheme", "split_seed",
              "val_fraction", "test_fraction", "val_policy", "on_bad_image", "cache_dir", "decode_workers",
              "workers", "devices", "device", "monitor", "shuffle_labels", "deterministic", "init_from", "weights", "views",
              "data"}
# the augmentation ranges `augment_strength` scales (hflip is on or off, not a range)
AUGMENT_RANGES = ("rotation", "shift", "zoom", "shear", "brightness", "contrast")


@dataclass(frozen=True)
class Param:
    """One searched or fixed setting: choices (a list), a range (low, high, log, step), or a fixed value."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    fixed: Any = None

    @property
    def searched(self) -> bool:
        return self.choices is not None or self.low is not None

    def to_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        if self.low is not None:
            return {"low": self.low, "high": self.high, "log": self.log, "step": self.step, "int": self.integer}
        return {"fixed": self.fixed}


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, checked space. `source` names where it came from (a preset or a file)."""

    params: tuple[Param, ...]
    source: str = ""

    def canonical(self) -> str:
        """The space as one JSON string: a study records it, so a second command with another space
        cannot join it by mistake."""
        return json.dumps({p.name: p.to_dict() for p in self.params}, sort_keys=True)

    def grid(self) -> dict[str, list]:
        """Optuna's grid sampler needs a list of values for every searched key."""
        ranges = [p.name for p in self.params if p.low is not None]
        if ranges:
            raise ConfigError(f"--sampler grid needs a list of values for every key; {', '.join(ranges)} "
                              "is a range (write e.g. [1.0e-4, 3.0e-4, 1.0e-3])")
        return {p.name: list(p.choices) for p in self.params if p.choices is not None}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def suggest(self, trial) -> dict[str, Any]:
        """One trial's settings, drawn by Optuna's sampler (fixed keys included)."""
        values = {}
        for p in self.params:
            if p.choices is not None:
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
            elif p.integer:
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            elif p.low is not None:
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
            else:
                values[p.name] = p.fixed
        return values


def apply(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """`base` with a trial's settings. Raises ConfigError for a value TrainConfig refuses."""
    plain = {k: v for k, v in values.items() if not k.startswith("augment.") and k != "augment_strength"}
    cfg = with_overrides(base, **plain)
    augment = cfg.data.augment
    if "augment_strength" in values:
        factor = float(values["augment_strength"])
        augment = dataclasses.replace(augment, **{k: getattr(base.data.augment, k) * factor for k in AUGMENT_RANGES})
    ranges = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("augment.")}
    augment = dataclasses.replace(augment, **ranges)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, augment=augment))


def searchable_keys() -> list[str]:
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    data = {f.name for f in dataclasses.fields(DataConfig)}
    augment = {f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig) if f.name != "enabled"}
    return sorted((train | data | augment | {"augment_strength"}) - FIXED_KEYS)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_space(spec: str | Path | dict, base: TrainConfig | None = None) -> SearchSpace:
    """A preset name (`default`, `lesson-grid`), a YAML file, or a mapping; checked against `base`
    (every listed value and both ends of every range must make a valid TrainConfig)."""
    if isinstance(spec, dict):
        where, raw = "the search space", spec
    else:
        path = PRESETS_DIR / f"{spec}.yaml" if str(spec) in presets() else Path(spec)
        where = f"{spec}" if path.parent == PRESETS_DIR else str(path)
        if not path.is_file():
            raise ConfigError(f"{spec}: no such search space file, and not a preset ({', '.join(presets())})")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: a search space is a mapping of settings to ranges or lists, e.g. "
                          "`lr: {low: 1.0e-4, high: 1.0e-2, log: true}`")
    valid = searchable_keys()
    params = []
    for name, value in raw.items():
        name = str(name)
        if name in FIXED_KEYS:
            raise ConfigError(f"{where}: {name!r} cannot be searched (it fixes the data, the split or the machine; "
                              "set it with the command's options)")
        if name not in valid:
            raise ConfigError(f"{where}: unknown setting {name!r}; searchable settings: {', '.join(valid)}")
        params.append(_param(where, name, value))
    space = SearchSpace(tuple(params), where)
    if not any(p.searched for p in space.params):
        raise ConfigError(f"{where}: nothing to search (every setting has a single value)")
    base = base or TrainConfig(source=".")
    _check_values(space, base, where)
    names = {p.name for p in space.params}
    augment_on = base.data.augment.enabled or any(
        p.name == "augment" and True in (p.choices or (p.fixed,)) for p in space.params)
    shaping = sorted(n for n in names if n == "augment_strength" or n.startswith("augment."))
    if shaping and not augment_on:
        raise ConfigError(f"{where}: {', '.join(shaping)} would change nothing: the base recipe trains without "
                          "augmentation (add `augment: [true, false]` to the space, or start from the default recipe)")
    return space


def _number(where: str, name: str, key: str, value) -> float:
    # PyYAML reads 1e-4 (no dot) as a string: accept it as the number it plainly is
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name}.{key} must be a number, got {value!r}") from None


def _param(where: str, name: str, value) -> Param:
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {name} is an empty list; give at least one value")
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{where}: {name} lists a value twice: {value}")
        return Param(name, choices=tuple(_coerce(v) for v in value))
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown or not {"low", "high"} <= set(value):
            raise ConfigError(f"{where}: {name} must be a list or a range {{low, high[, log][, step]}}; "
                              f"got keys {sorted(value)}")
        low, high = (_number(where, name, k, value[k]) for k in ("low", "high"))
        log = bool(value.get("log", False))
        step = _number(where, name, "step", value["step"]) if value.get("step") is not None else None
        if not low < high:
            raise ConfigError(f"{where}: {name} is an empty range (low {low:g} must be below high {high:g})")
        if log and low <= 0:
            raise ConfigError(f"{where}: {name} is on a log scale, so low must be above 0, got {low:g}")
        if log and step is not None:
            raise ConfigError(f"{where}: {name}: a log-scale range cannot also have a step")
        integer = all(isinstance(value[k], int) and not isinstance(value[k], bool) for k in ("low", "high"))
        return Param(name, low=low, high=high, log=log, step=step, integer=integer)
    return Param(name, fixed=_coerce(value))


def _coerce(value):
    """Numbers PyYAML left as strings (1e-4) become floats; anything else stays."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") and value.lower() not in ("inf", "nan") \
                else value
        except ValueError:
            return value
    return value


def _check_values(space: SearchSpace, base: TrainConfig, where: str) -> None:
    """Every choice and both ends of every range, one key at a time, through TrainConfig's own checks."""
    from ..models.registry import OWN_MODELS

    for p in space.params:
        candidates = list(p.choices) if p.choices is not None else \
            [p.low, p.high] if p.low is not None else [p.fixed]
        for value in candidates:
            if p.integer:
                value = int(value)
            if p.name == "model" and value not in OWN_MODELS:
                _check_timm_name(where, value)
            try:
                apply(base, {p.name: value})
            except (ConfigError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: {p.name} = {value!r} is not a valid setting ({exc})") from None


def _check_timm_name(where: str, name) -> None:
    import timm

    if not isinstance(name, str) or not timm.list_models(name):
        raise ConfigError(f"{where}: model {name!r} is neither cxrlab's (seed-cnn, seed-cnn-bn, kaggle-cnn) "
                          "nor a timm model name")
