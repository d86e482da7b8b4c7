"""Load and validate the pipeline configuration against the one schema.

The schema (``ulm/config.schema.yaml``, linked from ``workflow/schemas/``) is the single source of
truth: both the Snakefile and the CLI call :func:`validate_config`, so both fill the same defaults
and reject the same mistakes with the same one-line message.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ulm.errors import UlmError

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout holding workflow/presets/ (absent when installed)


@cache
def schema() -> dict:
    """The configuration JSON schema as a dict."""
    text = resources.files("ulm").joinpath("config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(cfg: dict, sch: dict) -> None:
    """Fill missing keys of ``cfg`` (in place) from the ``default`` fields of ``sch``."""
    for key, sub in sch.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if isinstance(cfg.get(key), dict) and "properties" in sub:
            _fill_defaults(cfg[key], sub)


def _coerce_strings(cfg: dict, sch: dict) -> None:
    """Parse (YAML) string values of non-string keys in place: `snakemake --config sec='{k: 1}'` passes
    nested values as text."""
    for key, sub in sch.get("properties", {}).items():
        value = cfg.get(key)
        if isinstance(value, dict) and "properties" in sub:
            _coerce_strings(value, sub)
        elif isinstance(value, str) and "string" not in (
            [sub.get("type")] if isinstance(sub.get("type"), str) else sub.get("type", [])
        ):
            with contextlib.suppress(yaml.YAMLError):
                cfg[key] = yaml.safe_load(value)


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"config key {path}: unknown key(s) {extra}; allowed: {allowed}"
    return f"config key {path}: {error.message}"


def _check_finite(value: Any, path: str = "") -> None:
    """Every number of a config is finite: NaN or inf would pass the schema's bounds unnoticed."""
    if isinstance(value, dict):
        for key, sub in value.items():
            _check_finite(sub, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for k, sub in enumerate(value):
            _check_finite(sub, f"{path}.{k}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UlmError(f"config key {path or '<top level>'}: must be a finite number, got {value}")


def validate_config(cfg: dict) -> dict:
    """Return a validated copy of ``cfg`` with every default filled in.

    Raises
    ------
    UlmError
        Naming the first offending key and what was expected.
    """
    if not isinstance(cfg, dict):
        raise UlmError(f"config must be a mapping of sections, got {type(cfg).__name__}")
    out = copy.deepcopy(cfg)
    _coerce_strings(out, schema())
    _fill_defaults(out, schema())
    _check_finite(out)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(out), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise UlmError(_describe(errors[0]))
    _check_boxes(out["graph"])
    if out["overrides_3d"]:
        three_d = for_dims(out, 3)
        errors = sorted(validator.iter_errors(three_d), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
        if errors:
            raise UlmError(_describe(errors[0]).replace("config key ", "config key overrides_3d.", 1))
    return out


def for_dims(cfg: dict, dims: int) -> dict:
    """The config as a run of ``dims`` sees it: in 3D, ``overrides_3d`` laid over its sections."""
    out = copy.deepcopy(cfg)
    if int(dims) == 3:
        for name, values in cfg.get("overrides_3d", {}).items():
            out[name] = {**out[name], **values}
    return out


def _same_graph_file(a: str, b: str) -> bool:
    """Whether two graph sources name the same file (``synthetic`` never does: each split has its seed)."""
    if "synthetic" in (a, b):
        return False
    if a.startswith("bundled:") or b.startswith("bundled:"):
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _check_boxes(graph: dict) -> None:
    """Each crop box [x0, x1, y0, y1, z0, z1] (um) has x0 < x1, y0 < y1, z0 < z1."""
    for key in ("crop_um", "test_crop_um"):
        box = graph.get(key)
        for axis, i in zip("xyz", (0, 2, 4), strict=True):
            if box is not None and not box[i] < box[i + 1]:
                raise UlmError(f"config key graph.{key}: {axis}0 = {box[i]} is not below {axis}1 = {box[i + 1]} (um)")


def _boxes_overlap(a: list[float], b: list[float]) -> bool:
    """Whether two [x0, x1, y0, y1, z0, z1] boxes share a volume."""
    return all(max(a[i], b[i]) < min(a[i + 1], b[i + 1]) for i in (0, 2, 4))


def check_disjoint_test_graph(graph: dict) -> None:
    """Training and test data must come from disjoint vascular graphs or disjoint regions of one graph
    (no leakage of test vessels into training)."""
    if not _same_graph_file(graph["source"], graph["test_source"]):
        return
    crop, test_crop = graph["crop_um"], graph["test_crop_um"]
    if crop is None or test_crop is None or _boxes_overlap(crop, test_crop):
        raise UlmError(
            f"config key graph.test_source: {graph['test_source']!r} is also the training graph; give graph.crop_um and"
            " graph.test_crop_um as disjoint boxes, or another test graph, so that test vessels never reach training"
        )


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value in YAML) into a key path and a value."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UlmError(f"--set {item!r}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise UlmError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), parsed


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Return ``cfg`` with each ``section.key=value`` override applied (a whole section may be set)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UlmError(f"--set {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> dict:
    """Read a YAML config (or start empty), apply overrides, validate and fill defaults."""
    cfg: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UlmError(f"config file {path}: not found")
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UlmError(f"config file {path}: not valid YAML ({exc})") from None
        except UnicodeDecodeError:
            raise UlmError(f"config file {path}: not a text file (not UTF-8)") from None
        if not isinstance(cfg, dict):
            raise UlmError(f"config file {path}: must be a mapping of sections, got {type(cfg).__name__}")
    cfg = apply_overrides(cfg, list(overrides))
    if isinstance(cfg.get("preset"), str) and cfg["preset"]:  # as the Snakefile: preset over config, --set over both
        if not (REPO_ROOT / "workflow" / "presets").is_dir():
            raise UlmError(
                f"config key preset: {cfg['preset']!r} cannot be applied outside the repository checkout "
                f"(no {REPO_ROOT / 'workflow' / 'presets'})"
            )
        apply_preset(cfg, REPO_ROOT, apply_overrides({}, list(overrides)))
    return validate_config(cfg)


# the ablation grid (train.ablations): the reference's variants of the headline network, as changes to
# the `train` section (its cascaded configuration prunes too)
ABLATIONS = {
    "pruning": {"prune": True},
    "deep_supervision": {"deep_supervision": True},
    "cascaded": {"cascaded": True, "prune": True},
}


def network_map_name(model: str, variant: str = "full", method: str | None = None) -> str:
    """Name of a network's density map: ``network_<model>_cnn`` for the configured training,
    ``network_<model>_<variant>_cnn`` for an ablation, ``network_<model>_on-<method>_cnn`` for a network of
    the sparsification sweep trained and scored on input ``method`` (e.g. ``topk``, ``threshold-0.05``).
    Map names must not start or end with a store kind such as sparse: check_stores.py reads kinds from names."""
    on = f"_on-{method}" if method else ""
    return f"network_{model}{on}_cnn" if variant == "full" else f"network_{model}{on}_{variant}_cnn"


_MAP_NAME = re.compile(
    r"^network_(?P<model>sparse|dense)(?:_on-(?P<method>[a-z]+(?:-[0-9.]+)?))?"
    r"(?:_(?P<variant>" + "|".join(ABLATIONS) + r"))?_cnn$"
)


def parse_network_map_name(name: str) -> dict | None:
    """The inverse of :func:`network_map_name`: {model, variant, method (None = the configured input)},
    or None for a map that is not a network's (ground truth, conventional, trivial)."""
    match = _MAP_NAME.match(name)
    if not match:
        return None
    return {"model": match["model"], "variant": match["variant"] or "full", "method": match["method"]}


def sweep_point(label: str) -> tuple[str, dict]:
    """A sparsification label of train.sweep -> (method, the sparse keys it sets): ``threshold-0.05`` ->
    (threshold, {tau: 0.05}); ``topk-2000`` -> (topk, {topk_k: 2000}); a bare method sets nothing."""
    method, _, value = label.partition("-")
    if not value:
        return method, {}
    return method, {"tau": float(value)} if method == "threshold" else {"topk_k": int(value)}


def derive_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed derived deterministically from the master seed and labels (stage, wildcards)."""
    text = "/".join([str(seed), *map(str, labels)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _merge(base: dict, extra: dict) -> dict:
    """Recursive dict update (``extra`` wins), in place on ``base``."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def presets(workflow_dir: str | Path) -> dict[str, Path]:
    """Preset name -> file in ``workflow/presets/``."""
    return {p.stem: p for p in sorted((Path(workflow_dir) / "workflow" / "presets").glob("*.yaml"))}


def apply_preset(cfg: dict, workflow_dir: str | Path, overrides: dict | None = None) -> dict:
    """If ``cfg['preset']`` names a preset, lay it over ``cfg`` (in place), then the command-line
    ``overrides`` again, so that `--config preset=tiny seed=3` keeps seed 3."""
    name = cfg.get("preset")
    if not name:
        return cfg
    known = presets(workflow_dir)
    if name not in known:
        raise UlmError(f"config key preset: unknown preset {name!r}; available: {sorted(known)}")
    _merge(cfg, yaml.safe_load(known[name].read_text()) or {})
    return _merge(cfg, overrides or {})
