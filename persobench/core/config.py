"""The run configuration: typed dataclasses, loaded from YAML with dotted command-line overrides.

Every protocol choice that moves a score is a named field here, and the resolved config is written
next to every result. Configs are data: YAML is read with `safe_load` (no code execution), unknown
keys and wrong types are errors that name the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import UserError
from .registry import Registry

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class ModelConfig:
    """The base text-to-image model every method starts from."""

    source: str = "toyworld"  # "toyworld" (embedded), a diffusers folder, or a hub id (local cache only)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    local_files_only: bool = True  # hub ids resolve from the local cache only: never a download


@dataclasses.dataclass
class SamplerConfig:
    scheduler: str = "ddim"  # a name in the scheduler registry (`persobench list`)
    steps: int = 30
    cfg_scale: float = 5.0
    eta: float = 0.0
    negative_prompt: str = ""
    resolution: int | None = None  # pixels; None = the model's native size
    batch_size: int = 8


@dataclasses.dataclass
class DatasetConfig:
    """Which subjects and prompts. A config file's `dataset:` section belongs to the dataset it names: when an
    override switches `dataset.name` to another dataset, none of that section applies (see `load_config`)."""

    name: str = "toybench"  # dreambench | toybench | folder
    path: str | None = None  # dreambench / folder: where the data is (folder: one subject's images, or subject folders
    # plus a classes file); toybench: the shipped copy
    subjects: list[str] | None = None  # None = every subject
    max_subjects: int | None = None
    max_prompts: int | None = None  # first N prompts of each subject's list
    images_per_prompt: int = 4  # DreamBench protocol: 4
    class_noun: str | None = None  # folder, one subject's folder: its class noun
    classes: str | None = None  # folder of subject folders: its classes file (default: prompts_and_classes.txt or classes.csv in path)
    live_classes: list[str] = dataclasses.field(default_factory=lambda: ["cat", "dog"])
    skip_bad_images: bool = False  # false: every unusable image is listed in one error; true: skipped, one warning each


@dataclasses.dataclass
class MetricsConfig:
    """DreamBench scoring; every field here moves a score and is written next to it.

    `preset` (dreambench | dreambench++ | custom-diffusion, see reports/metrics/presets.py) sets the
    published conventions below at once; fields written explicitly in the YAML or overrides win. The
    defaults (preset null) are the toy world's, which the regression gate's baseline was made with.
    """

    names: list[str] = dataclasses.field(default_factory=lambda: ["dino", "clip-i", "clip-t", "oracle"])
    preset: str | None = None  # a published protocol's conventions; null = the defaults below
    dino_backbone: str = "toy-dino"  # real: dino-vits16 / dino-vits8 (timm vit_small_patch{16,8}_224.dino)
    clip_backbone: str = "toy-clip"  # real: clip-vit-b32 (open_clip ViT-B-32-quickgelu, OpenAI weights)
    dino_weights: str | None = None  # a real DINO backbone's local weights file or folder; null = the local HF cache
    clip_weights: str | None = None  # the same for the CLIP backbone
    oracle_path: str | None = None  # the toy world's oracle folder (None: the embedded one)
    image_scale: Literal["raw", "x100"] = "raw"  # DINO / CLIP-I: cosine, or 100 x cosine (DreamBench++)
    pairing: Literal["all-pairs", "one-to-one"] = "all-pairs"  # generated x every reference, or x the one it was given
    clip_t_scale: Literal["raw", "x100", "w2.5"] = "raw"
    clip_t_text: Literal["class", "prompt"] = "class"  # class: the prompt with the class noun in place of the identifier
    reference_set: Literal["all", "first"] = "all"  # DreamBench: all of the subject's real images
    batch_size: int = 64
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    bootstrap: int = 1000  # resamples for the 95% intervals in the tables (two-stage: subjects, then prompts; reports/tables.py)
    baseline_method: str | None = None  # one of `methods`: every other method's paired delta vs it (points/<p>/deltas.csv); null = none


@dataclasses.dataclass
class GuidanceTermConfig:
    """What every guidance term's config section (`guidance.<term>.*`) has: a switch and the weight of its
    loss in the guided score S = sum over enabled terms of weight * loss. A term's own dataclass extends it."""

    enabled: bool = True
    weight: float = 1.0
    # a term that reads the reference palette (the inverted subject images) says so, so the harness inverts them
    needs_palette: typing.ClassVar[bool] = False

    def check(self, prefix: str) -> None:
        """Range checks that types cannot express; raise `UserError` naming `prefix.<field>`."""


# Guidance terms by name, each a class whose `Config` (a GuidanceTermConfig) is its config section
# `guidance.<name>`: `persobench.guidance` registers Pick-and-Draw's appearance and layout terms (named here,
# not imported, so this layer imports nothing above it); a plugin registers its own.
guidance_terms: Registry[Any] = Registry("guidance term", builtins=("persobench.guidance.appearance", "persobench.guidance.layout"),
                                         plugins="persobench.guidance_terms")


@dataclasses.dataclass
class GuidanceConfig:
    """Training-free guidance applied in the sampling loop (our reconstruction of Pick-and-Draw)."""

    name: str = "none"  # none | pick-and-draw
    compare_unguided: bool = True  # also sample each method without guidance (the paper's table rows)
    steps: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5])  # guided fraction of the steps
    iterations: int = 1
    step_size: list[float] = dataclasses.field(default_factory=lambda: [20.0, 10.0])  # eta, linear over the guided range
    inversion: Literal["ddim", "null_text"] = "ddim"
    inversion_prompt: str = "a photo of a {class}"
    null_text_iterations: int = 10
    null_text_lr: float = 1e-2
    # + one section per registered guidance term (`guidance_config_type`): appearance, layout, ...

    def terms(self) -> dict[str, GuidanceTermConfig]:
        """The term sections, in registration order (a term registered after this config was made: its defaults)."""
        return {name: getattr(self, name, None) or guidance_terms.get(name).Config() for name in guidance_terms.ordered_names()}

    def palette_term(self) -> tuple[str, GuidanceTermConfig] | None:
        """(name, section) of the enabled term that reads the reference palette (its `num_references` picks
        the images), if any."""
        return next(((n, c) for n, c in self.terms().items() if c.enabled and c.needs_palette), None)


_GUIDANCE_TYPES: dict[tuple, type] = {}


def guidance_config_type() -> type[GuidanceConfig]:
    """`GuidanceConfig` with one section per registered guidance term, `guidance.<name>` typed by the term's
    `Config`: a term registered by a plugin (or a test) is a config section without an edit here."""
    items = tuple((name, guidance_terms.get(name).Config) for name in guidance_terms.ordered_names())
    if items not in _GUIDANCE_TYPES:
        fields = [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in items]
        _GUIDANCE_TYPES[items] = dataclasses.make_dataclass(
            "GuidanceConfig", fields, bases=(GuidanceConfig,), namespace={"__module__": __name__, "__doc__": GuidanceConfig.__doc__})
    return _GUIDANCE_TYPES[items]


@dataclasses.dataclass
class ReportConfig:
    wandb: Literal["offline", "online", "disabled"] = "offline"  # offline runs land in <run>/wandb, sync later
    wandb_project: str = "persobench"


@dataclasses.dataclass
class RunConfig:
    name: str = "default"
    seed: int = 0
    store: str = "runs"  # the run store's root folder
    methods: list[str] = dataclasses.field(default_factory=lambda: ["vanilla-sd"])
    method_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=lambda: guidance_config_type()())
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    sweep: list[str] = dataclasses.field(default_factory=list)  # ["key=v1,v2", ...]: a grid of run points
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; int -> float is the only silent widening."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise UserError(f"config key '{key}' must be {tp.__name__}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    if cls is GuidanceConfig:
        cls = guidance_config_type()
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise UserError(f"unknown config key {where}; allowed keys{' in ' + prefix if prefix else ''}: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def signature_dict(cfg: RunConfig | GuidanceConfig) -> dict[str, Any]:
    """`to_dict` for hashing (the gate's signature, guided sample keys): a guidance term section that is off and
    untouched (its Config's defaults) is left out, so installing a plugin term changes no existing key."""
    data = to_dict(cfg)
    g, sections = (cfg.guidance, data["guidance"]) if isinstance(cfg, RunConfig) else (cfg, data)
    for name, section in g.terms().items():
        if not section.enabled and section == type(section)():
            sections.pop(name, None)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a','b','c'], value); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise UserError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"override key '{'.'.join(path)}': '{part}' is not a section")
        node = nxt
    node[path[-1]] = value


PACKAGED_DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- overrides, validated.

    A config file's `dataset:` section belongs to the dataset it names: when an override switches
    `dataset.name` to another dataset, none of the file's `dataset.*` values apply (so default.yaml's
    ToyBench subject list and work-list sizes never reach a `folder` or `dreambench` run); write
    `dataset.*` overrides for the new dataset instead. The keys the user wrote (a config file other than
    the packaged default, or an override) are kept on the config (`written`)."""
    data: dict[str, Any] = to_dict(RunConfig())
    parsed = [parse_override(text) for text in overrides or []]
    given: set[str] = set()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file '{p}' does not exist; pass a YAML file (see configs/)")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise UserError(f"config file '{p}' is not valid YAML{where}: fix the syntax") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file '{p}' must hold a mapping of keys, not {type(loaded).__name__}")
        loaded = _scope_dataset_section(loaded, parsed, p)
        _merge(data, loaded)
        file_keys = _dotted_keys([], loaded)
        if p.resolve() != PACKAGED_DEFAULT:
            given |= file_keys
    else:
        file_keys = set()
    for key_path, value in parsed:
        apply_override(data, key_path, value)
        given |= _dotted_keys(key_path, value)
    # a preset fills the metrics fields no file or override wrote (the packaged default's included)
    _apply_metrics_preset(data, {k.split(".")[1] for k in file_keys | given if k.startswith("metrics.")})
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    cfg.written_keys = frozenset(given)  # not a field: never in config.yaml nor in any hash
    return cfg


def written(cfg: RunConfig, key: str) -> bool:
    """Whether the user wrote the dotted `key` (or a section above it) in a config file or an override; the
    packaged default.yaml counts as defaults. A config built in Python: whether the value differs from the default."""
    keys = getattr(cfg, "written_keys", None)
    if keys is not None:
        parts = key.split(".")
        return any(".".join(parts[:i]) in keys for i in range(1, len(parts) + 1))
    value, default = cfg, RunConfig()
    for part in key.split("."):
        value, default = getattr(value, part), getattr(default, part)
    return value != default


def _dotted_keys(prefix: list[str], value: Any) -> set[str]:
    if isinstance(value, dict) and prefix != ["method_params"]:
        return {k for name, v in value.items() for k in _dotted_keys(prefix + [str(name)], v)}
    return {".".join(prefix)}


def _scope_dataset_section(loaded: dict[str, Any], overrides: list[tuple[list[str], Any]], source: Path) -> dict[str, Any]:
    """The file without its `dataset:` section when an override names another dataset than the section does."""
    section = loaded.get("dataset")
    names = [v for k, v in overrides if k == ["dataset", "name"]]
    if not isinstance(section, dict) or "name" not in section or not names or names[-1] == section["name"]:
        return loaded
    # the packaged demo's section is expected to go; a user's own file losing its section deserves a visible line
    log = logger.info if source.resolve() == PACKAGED_DEFAULT else logger.warning
    log("config '%s': its dataset section is for %r; dataset.name=%s starts from that dataset's defaults",
        source, section["name"], names[-1])
    return {k: v for k, v in loaded.items() if k != "dataset"}


def _apply_metrics_preset(data: dict[str, Any], explicit: set[str]) -> None:
    """metrics.preset fills every convention the user did not write; an unknown name fails here, before any model loads."""
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or metrics.get("preset") is None:
        return
    for key, value in preset_fields(metrics["preset"]).items():
        if key not in explicit:
            metrics[key] = value


# Published metric protocols by name, {MetricsConfig field: value}. `reports/metrics/presets.py` registers them;
# it is named, not imported, so this layer imports nothing above it.
metric_presets: Registry[dict[str, Any]] = Registry("metrics preset", builtins=("persobench.reports.metrics.presets",), plugins=None)


def preset_fields(name: Any) -> dict[str, Any]:
    """The MetricsConfig values of a preset; an unknown name is the user's to fix."""
    if not isinstance(name, str) or name not in metric_presets:
        raise UserError(f"metrics.preset must be null or one of {', '.join(metric_presets.names())}, got {name!r}")
    return dict(metric_presets.get(name))


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "method_params":
            _merge(base[k], v)
        else:
            base[k] = v


def validate(cfg: RunConfig) -> None:
    """Range checks that types cannot express."""
    s = cfg.sampler
    if s.steps <= 0:
        raise UserError(f"sampler.steps must be a positive number of denoising steps, got {s.steps}")
    if s.batch_size <= 0:
        raise UserError(f"sampler.batch_size must be positive, got {s.batch_size}")
    if s.cfg_scale < 0:
        raise UserError(f"sampler.cfg_scale must be >= 0 (1 = no guidance), got {s.cfg_scale}")
    if not 0.0 <= s.eta <= 1.0:
        raise UserError(f"sampler.eta must be in [0, 1], got {s.eta}")
    if s.resolution is not None and (s.resolution <= 0 or s.resolution % 8):
        raise UserError(f"sampler.resolution must be a positive multiple of 8, got {s.resolution}")
    if cfg.dataset.images_per_prompt <= 0:
        raise UserError(f"dataset.images_per_prompt must be positive, got {cfg.dataset.images_per_prompt}")
    for key in ("max_subjects", "max_prompts"):
        v = getattr(cfg.dataset, key)
        if v is not None and v <= 0:
            raise UserError(f"dataset.{key} must be positive or null, got {v}")
    g = cfg.guidance
    for name, term in g.terms().items():
        term.check(f"guidance.{name}")
    if len(g.steps) != 2 or not 0.0 <= g.steps[0] < g.steps[1] <= 1.0:
        raise UserError(f"guidance.steps must be [start, end] fractions with 0 <= start < end <= 1, got {g.steps}")
    if len(g.step_size) != 2 or min(g.step_size) < 0:
        raise UserError(f"guidance.step_size must be [first, last] non-negative step sizes, got {g.step_size}")
    if g.iterations <= 0:
        raise UserError(f"guidance.iterations must be positive, got {g.iterations}")
    if g.name != "none" and g.palette_term() is not None and g.inversion == "null_text" and s.cfg_scale <= 1.0:
        raise UserError(f"guidance.inversion=null_text needs sampler.cfg_scale > 1 (it optimises CFG's null embedding), "
                        f"got {s.cfg_scale}; use guidance.inversion=ddim")
    if cfg.metrics.batch_size <= 0 or cfg.metrics.bootstrap < 0:
        raise UserError("metrics.batch_size must be positive and metrics.bootstrap >= 0")
    if cfg.metrics.baseline_method is not None and cfg.metrics.baseline_method not in cfg.methods:
        raise UserError(f"metrics.baseline_method {cfg.metrics.baseline_method!r} is not one of this run's methods; "
                        f"choose one of {', '.join(cfg.methods)}, or null (no method-vs-method deltas)")
    for key in ("dino_weights", "clip_weights"):
        weights = getattr(cfg.metrics, key)
        if weights is not None and not Path(weights).expanduser().exists():
            raise UserError(f"metrics.{key}: '{weights}' does not exist; point it at a local weights file or folder, or null")
        backbone = getattr(cfg.metrics, key.replace("_weights", "_backbone"))
        if weights is not None and (backbone.startswith("toy-") or ":" in backbone):
            raise UserError(f"metrics.{key} is for a real backbone (dino-vits16, dino-vits8, clip-vit-b32); {backbone!r} has its own; "
                            "set it to null")
    if not cfg.methods:
        raise UserError("methods is empty; name at least one method (persobench list)")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise UserError(f"methods lists a method twice: {cfg.methods}")
    if "/" in cfg.name or cfg.name.startswith("."):
        raise UserError(f"name {cfg.name!r} must be a plain folder name (no '/')")


def stable_hash(obj: Any, n: int = 12) -> str:
    """Hex digest of a JSON-able object with sorted keys: the key of every stored artefact."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so list values can be swept: 'a=[x, y],[z]'."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def expand_sweep(specs: list[str]) -> list[list[str]]:
    """['a=1,2', 'b=x,y'] -> the grid of override lists [['a=1','b=x'], ['a=1','b=y'], ...]."""
    grid: list[list[str]] = [[]]
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"sweep {spec!r} must look like key=v1,v2,...")
        key, values = spec.split("=", 1)
        options = [v for v in _split_top_level(values) if v != ""]
        if not options:
            raise UserError(f"sweep {spec!r} lists no values")
        grid = [point + [f"{key}={v}"] for point in grid for v in options]
    return grid
