"""The file contracts: every file name patrol-compress writes or reads, defined once.

Torch-free (a test checks that importing this module loads no torch): the
benchmark on an edge device, the report and the CLI's argument checks read
these names without the training stack.

A run folder (``prune``/``train``) holds the resolved recipe, the stage ledger,
versions, ``metrics.json`` and the final model; a prune run adds the
sub-folders below. An export folder holds the edge/cloud partition files and
``manifest.json`` (written last, so a folder with a manifest is complete). An
attack writes ``attack.json`` and its reconstruction grid into its output
folder; ``defend`` one such folder per point plus ``defenses.json``.

``manifest.json`` and ``attack.json`` have typed records (:class:`Manifest`,
:class:`AttackResult`): the writers check what they write against them and the
readers (:func:`read_manifest`, the report) validate with them, so a bad file
stops with one line naming the file and the key (:func:`check_record`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from patrol_compress.errors import ArtifactError
from patrol_compress.io import read_json, sha256_file

# --- a run folder -----------------------------------------------------------
STAGES_FILE = "stages.json"
"""Each finished stage with its wall time and recipe sha256 (resume reads it)."""
RECIPE_FILE = "recipe.resolved.yaml"
"""The recipe with every default filled in, as the run used it."""
VERSIONS_FILE = "versions.json"
METRICS_FILE = "metrics.json"
"""Accuracy before/after, edge size, budget, stage times (``prune``/``train``)."""
SAMPLES_FILE = "samples.png"
"""A grid of training images, written by the data stage."""
MODEL_FILE = "model.safetensors"
"""A saved model's weights (``run.save_run_model``)."""
META_FILE = "model.json"
"""A saved model's description: config, classes, input shape, weights sha256, removal."""
ACCURACY_FILE = "accuracy.json"
"""Accuracy of the model in the same folder (``target/``, ``pruned/``)."""
PATROL_SUMMARY_FILE = "summary.json"
"""PATROL's per-epoch history, surrogate PSNR and mask sparsity (in ``patrol/``)."""
MASKED_WEIGHTS_FILE = "masked.safetensors"
"""The masked network after PATROL fine-tuning, before removal (in ``patrol/``)."""
CHECKPOINT_FILE = "last.json"
"""A training stage's latest per-epoch checkpoint description (in ``checkpoints/<stage>/``)."""

TARGET_DIR = "target"
PATROL_DIR = "patrol"
PRUNED_DIR = "pruned"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
DEFENSES_DIR = "defenses"

# --- an export folder ---------------------------------------------------------
MANIFEST = "manifest.json"
"""Every file of the artifact with its sha256 and size, plus shapes and costs."""
EDGE_ONNX = "edge.onnx"
CLOUD_ONNX = "cloud.onnx"
EDGE_XML = "edge.xml"
EDGE_BIN = "edge.bin"
CLOUD_XML = "cloud.xml"
CLOUD_BIN = "cloud.bin"
EDGE_ENGINE = "edge.engine"
CLOUD_ENGINE = "cloud.engine"
TIMING_CACHE = "trt.timing.cache"
"""TensorRT's timing cache, kept next to the engines and reused by the next build."""
NOISE_INPUT = "noise"
"""A noisy uplink's edge takes a second input of this name: standard normal values of the
codes' shape, drawn per image by the deployer (:mod:`patrol_compress.uplink.noise` says why
the graph does not draw them)."""

# --- attack results -------------------------------------------------------------
ATTACK_FILE = "attack.json"
"""One attacked model: scores, floors, accuracy, edge size; one point of the report."""
ATTACK_GRID = "attack_grid.png"
"""Originals and reconstructions, one row per attack (named in attack.json's ``grid``)."""
DEFENSES_FILE = "defenses.json"
"""``defend``'s list of every point of its sweep."""


# --- typed records ------------------------------------------------------------------
class Record(BaseModel):
    """A JSON file's record: known keys typed, unknown keys kept (files grow new keys).

    Numbers must be finite and no type is coerced (``true`` is not a number,
    ``"2"`` not an integer); a violation becomes one line naming the file and
    the key (:func:`check_record`).
    """

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


R = TypeVar("R", bound=Record)


class FileEntry(Record):
    sha256: str
    bytes: int = Field(ge=0)


class PartitionCost(Record):
    """What one partition weighs and computes (``manifest.json``'s ``edge`` and ``cloud``)."""

    params: int | None = None
    weight_bytes: int | None = None
    macs: int | None = None
    bytes_sent: int | None = None


class EdgeCost(PartitionCost):
    bytes_sent: int = Field(ge=0)
    """Bytes the edge uplinks per image: the benchmark's uplink time needs it."""


class SplitTensor(Record):
    """How an INT8 edge codes what it sends: ``real = scale * (q - zero_point)``."""

    dtype: str
    scale: float = Field(gt=0)
    zero_point: int = Field(ge=0, le=255)


class QuantParity(Record):
    """INT8 against FP32 on the recipe's test set (accuracies are fractions)."""

    metric: str
    fp32: float
    int8: float
    drop_points: float
    passed: bool


class Quantization(Record):
    """``manifest.json``'s ``quantization``: what an INT8 export did, whether it kept accuracy."""

    split_tensor: SplitTensor
    parity: QuantParity


class Manifest(Record):
    """``manifest.json``: the files of an export folder and what its partitions cost.

    Written by :func:`patrol_compress.exporters.manifest.build_manifest`, read
    by :func:`read_manifest` (the benchmark, the adaptive attack, ``export``).
    """

    split: int = Field(ge=1)
    target: str
    precision: str
    opset: int | None = None
    files: dict[str, FileEntry] = Field(min_length=1)
    input_shape: list[int] = Field(min_length=1)
    edge_output_shape: list[int] | None = None
    edge_output_dtype: str | None = None
    output_shape: list[int] | None = None
    edge: EdgeCost
    cloud: PartitionCost | None = None
    versions: dict[str, Any] | None = None
    notes: dict[str, Any] | None = None
    quantization: Quantization | None = None
    """INT8 only: the split tensor's uint8 code (the cloud and the adaptive attack
    dequantize with it) and the accuracy parity."""
    model_sha256: str | None = None
    """sha256 of the exported model's weights and buffers in memory
    (:func:`patrol_compress.models.saved.state_sha256`): whose export this is."""
    weights_sha256: str | None = None
    """``export RUN``: sha256 of the run's ``model.safetensors``."""


class Score(Record):
    """Reconstruction quality of one attack or floor (more keys: images, mse, seconds, ...)."""

    psnr: float
    ssim: float
    attack_accuracy: float | None = None


class Strongest(Record):
    attack: str
    psnr: float
    ssim: float


class DefenseInfo(Record):
    name: str
    parameter: str | None = None
    strength: float | None = None


class AccuracyInfo(Record):
    """The attacked model's utility; ``value`` is a fraction of ``metric`` (top1, rank1)."""

    metric: str
    value: float = Field(ge=0.0, le=1.0)


class GridInfo(Record):
    file: str = ATTACK_GRID
    rows: list[str] | None = None


MAX_COUNT = 10**18
"""Largest count a record may hold (a float holds it; 10**400 broke every formatter)."""


def _count(value: Any) -> Any:
    """A finite number, kept as the file has it (an int stays an int)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "Input should be a number")
    if isinstance(value, int) and abs(value) > MAX_COUNT:  # isfinite() overflows on it
        raise PydanticCustomError("count_range", "Input should be a count of at most 10^18")
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return value


Count = Annotated[Any, BeforeValidator(_count)]


class Counts(Record):
    """Edge size or budget facts: the named counts are numbers, anything else is kept."""

    params: Count = None
    weight_bytes: Count = None
    macs: Count = None
    bytes_sent: Count = None
    fit_split: Count = None


class AttackResult(Record):
    """``attack.json``: one attacked model, one point of the report.

    Written by :func:`patrol_compress.attacks.evaluate.attack_model`, read by
    the report (:mod:`patrol_compress.report.collect`). Keys added after the
    first version (``label``, ``series``, ``defense``, ``accuracy``, ``edge``,
    ``budget``, ``strongest``, ``attack_failed``, ...) are optional, so old
    files still load.
    """

    split: int = Field(ge=1)
    attacks: dict[str, Score] = Field(min_length=1)
    strongest: Strongest | None = None
    attack_failed: bool = False
    run: str | None = None
    label: str | None = None
    series: str | None = None
    grid: GridInfo | None = None
    mean_image: Score | None = None
    label_only: Score | None = None
    label_only_mix: Score | None = None
    defense: DefenseInfo | None = None
    accuracy: AccuracyInfo | None = None
    edge: Counts | None = None
    budget: Counts | None = None
    metric_note: str | None = None
    region_note: str | None = None
    command: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)

    @field_validator("run", mode="before")
    @classmethod
    def _run_folder(cls, value: Any) -> Any:
        """Only names the default label's folder: anything but a non-empty string is ignored."""
        return value if isinstance(value, str) and value else None

    @field_validator("command", mode="before")
    @classmethod
    def _join_argv(cls, value: Any) -> Any:
        """A command recorded as its argv list reads as one line."""
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return " ".join(value)
        return value

    @field_validator("versions", mode="before")
    @classmethod
    def _plain_versions(cls, value: Any) -> dict[str, str]:
        """Provenance only: anything but an object is ignored, values are shown as text."""
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items()}


_EXPECT_KEY = {
    "split": "the split point (an integer >= 1)",
    "attacks": "an object {attack name: {psnr, ssim, ...}} with at least one attack",
    "accuracy.value": "a fraction in [0, 1]",
    "grid.rows": "a list of row names",
    "files": "a non-empty object of name -> {sha256, bytes}",
}
_EXPECT_MISSING = {"psnr": "the PSNR (a number)", "ssim": "the SSIM (a number)"}
_EXPECT_TYPE = {
    "float_type": "a number",
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "finite_number": "a finite number",
}


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return type(value).__name__


def _field_type(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """What the field at ``loc`` holds, for a missing key: "a number", "a string", ..."""
    annotation: Any = model
    for part in loc:
        fields = getattr(annotation, "model_fields", None)
        if fields is not None and part in fields:
            annotation = fields[part].annotation
        elif getattr(annotation, "__origin__", None) is dict:
            annotation = annotation.__args__[1]
        else:
            return "a value"
        args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        if len(args) == 1 and getattr(annotation, "__origin__", None) is not dict:
            annotation = args[0]
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    return names.get(annotation, "an object")


def check_record(record: type[R], data: object, path: Path | str) -> R:
    """``data`` as ``record``; the first violation raises one line naming ``path`` and the key."""
    if not isinstance(data, dict):
        _fail(path, "", "a JSON object", type(data).__name__)
    try:
        return record.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        kind, value = err["type"], err.get("input")
        if kind == "missing":
            what = _EXPECT_MISSING.get(str(loc[-1])) or _EXPECT_KEY.get(dotted)
            _fail(path, dotted, what or _field_type(record, loc), "nothing")
        what = _EXPECT_KEY.get(dotted) or _EXPECT_TYPE.get(kind) or err["msg"].lower()
        if kind == "too_short":
            found = "an empty object" if isinstance(value, dict) else "an empty list"
        elif kind in ("finite_number", "greater_than_equal", "less_than_equal"):
            found = str(value)
        else:
            found = _describe(value)
        _fail(path, dotted, what, found)


def _fail(path: Path | str, key: str, expected: str, found: str) -> NoReturn:
    where = f" {key}:" if key else ""
    raise ArtifactError(f"{path}:{where} expected {expected}, found {found}")


# --- reading an export folder -----------------------------------------------------
def read_manifest(artifact_dir: Path | str) -> dict[str, Any]:
    """Load manifest.json and check it against :class:`Manifest` (one line naming the key)."""
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: no manifest here; is this an export folder?")
    try:
        manifest = read_json(path)
    except ValueError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    check_record(Manifest, manifest, path)
    return dict(manifest)


def listed_path(root: Path, name: object) -> Path:
    """``root/name`` for a name the manifest lists, refused unless it stays inside ``root``.

    Symlinks are resolved first: a link from the artifact to a file elsewhere
    (``edge.onnx -> /somewhere/else.onnx``) is outside the folder too.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ArtifactError(f"{MANIFEST} lists {str(name)[:60]!r}, which is not a file name")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{MANIFEST} lists '{name[:80]}', which is outside the artifact folder")
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise ArtifactError(
            f"{path}: a link to {path.resolve()}, which is outside the artifact folder; "
            "refusing to load it"
        )
    return path


def verify_manifest(artifact_dir: Path | str) -> dict[str, Any]:
    """Recompute every listed file's sha256; raise ArtifactError naming the first mismatch."""
    root = Path(artifact_dir)
    manifest = read_manifest(root)
    for name, entry in manifest["files"].items():
        path = listed_path(root, name)
        if not isinstance(entry, dict):
            raise ArtifactError(f"{root / MANIFEST}: entry of '{name}' must be an object")
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST} but missing")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise ArtifactError(
                f"{path}: {size} bytes, {MANIFEST} says {entry.get('bytes')}; the file was changed"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ArtifactError(f"{path}: sha256 does not match {MANIFEST}; the file was changed")
    return manifest
