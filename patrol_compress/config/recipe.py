"""Recipes: validated YAML that describes a whole run.

A recipe is data, checked before anything runs, on the strict base and YAML
reader of :mod:`patrol_compress.config.base` (every violation is one line
naming the field path, what was expected and what was found). Its ``attack:``
and ``defenses:`` sections are the models of :mod:`.privacy`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    JsonValue,
    StrictInt,
    Tag,
    model_validator,
)

from patrol_compress.config.base import StrictModel, read_yaml, short, validate
from patrol_compress.config.factory import check_factory_spec
from patrol_compress.config.privacy import AttackConfig, DefensesConfig, FrontierConfig
from patrol_compress.errors import RecipeError

SCHEMA_VERSION = 1
SEED_MAX = 2**31 - 1
"""Seeds feed torch, numpy (below 2**32) and derived seeds (seed + k), so they stay small."""


MAX_GENERATED_BYTES = 16 * 2**30
"""Largest generated (synthetic-vehicles) dataset, in bytes of 8-bit RGB pixels."""


class DataConfig(StrictModel):
    """Which dataset, where it lives, and how images are prepared."""

    kind: Literal["synthetic-vehicles", "veri", "veri-wild", "imagefolder", "fashion-mnist"] = (
        "synthetic-vehicles"
    )
    root: Path | None = Field(
        default=None, description="dataset folder; required for every kind but the generated one"
    )
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    seed: Annotated[int, Field(ge=-SEED_MAX, le=SEED_MAX)] = 0
    # synthetic-vehicles
    num_identities: Annotated[int, Field(ge=4, le=100_000)] = 120
    num_cameras: Annotated[int, Field(ge=2, le=64)] = 6
    images_per_camera: Annotated[int, Field(ge=1, le=64)] = 2
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.25
    cache_dir: Path | None = Field(default=None, description="default: .cache/patrol-compress")
    # veri-wild
    veriwild_test_size: Literal[3000, 5000, 10000] = 3000
    # imagefolder / fashion-mnist: cap the number of training images (0 = all)
    max_train_images: Annotated[int, Field(ge=0)] = 0
    max_test_images: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if self.kind != "synthetic-vehicles" and self.root is None:
            raise ValueError(f"data.root is required for data.kind '{self.kind}'")
        return self

    @model_validator(mode="after")
    def _generated_size(self) -> DataConfig:
        """The generated set is held in memory: refuse sizes no machine holds (each field
        alone is in range; their product made a run hang or die for lack of memory)."""
        if self.kind != "synthetic-vehicles":
            return self
        images = self.num_identities * self.num_cameras * self.images_per_camera
        size = images * self.image_size**2 * 3
        if size > MAX_GENERATED_BYTES:
            raise ValueError(
                f"the generated dataset would hold {images:,} images of "
                f"{self.image_size}x{self.image_size} ({size / 2**30:,.0f} GiB); at most "
                f"{MAX_GENERATED_BYTES // 2**30} GiB: lower num_identities, num_cameras, "
                "images_per_camera or image_size"
            )
        return self


class BlocksConfig(StrictModel):
    """Names of a custom model's top-level children, grouped into blocks."""

    stem: list[str] = Field(min_length=1)
    stages: list[list[str]] = Field(min_length=1)
    head: list[str] = Field(default_factory=list)


StageEnds = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
"""The module each stage ends with, as dotted paths (``[features.3, features.6]``)."""


def _blocks_form(value: object) -> str:
    return "paths" if isinstance(value, (list, tuple)) else "children"


Blocks = Annotated[
    Annotated[BlocksConfig, Tag("children")] | Annotated[StageEnds, Tag("paths")],
    Discriminator(_blocks_form),
]
"""How a custom model divides into stages: groups of its top-level children (a
mapping; its forward must run them in order), or the modules each stage ends
with (a list of dotted paths; the forward is traced and cut there)."""


class ModelConfig(StrictModel):
    arch: Literal["resnet18", "resnet34", "resnet50", "custom"] = "resnet18"
    width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    stem: Literal["imagenet", "small"] = "imagenet"
    last_stride: Literal[1, 2] = 2
    factory: str | None = Field(default=None, description="'pkg.module:function' for arch=custom")
    factory_kwargs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="keyword arguments of model.factory (arch custom only): JSON values, so the "
        "resolved recipe and model.json hold them as written",
    )
    blocks: Blocks | None = Field(
        default=None,
        description="arch custom: {stem, stages, head} of top-level children, or the module "
        "paths each stage ends with ([features.3, features.6]; the forward is traced)",
    )
    pretrained: Path | None = Field(
        default=None,
        description="torchvision-style state dict (.safetensors) for the backbone; for arch "
        "custom the model's own weights, its own head (model.blocks.head) included",
    )

    @model_validator(mode="after")
    def _custom_needs_factory(self) -> ModelConfig:
        if self.arch != "custom" and (self.factory or self.factory_kwargs):
            # Ignored by the built-in architectures, yet copied into every run folder.
            given = "model.factory_kwargs" if self.factory_kwargs else "model.factory"
            raise ValueError(f"{given} is only for arch 'custom'; arch is '{self.arch}'")
        if self.arch == "custom" and not self.factory:
            raise ValueError("model.factory ('pkg.module:function') is required for arch 'custom'")
        if self.factory:
            check_factory_spec(self.factory)  # before anything could import it
        return self


class TrainConfig(StrictModel):
    """Target-model training (cross-entropy with label smoothing + batch-hard triplet)."""

    epochs: Annotated[int, Field(ge=1, le=10_000)] = 20
    identities_per_batch: Annotated[int, Field(ge=2)] = 16
    instances_per_identity: Annotated[int, Field(ge=1)] = 4
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 5e-4
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    triplet_margin: Annotated[float, Field(ge=0.0)] = 0.3
    triplet_weight: Annotated[float, Field(ge=0.0)] = 1.0
    amp: bool = True
    num_workers: Annotated[int, Field(ge=0)] = 0
    checkpoint: Path | None = Field(
        default=None, description="trained target weights (.safetensors); skips training"
    )

    @property
    def batch_size(self) -> int:
        return self.identities_per_batch * self.instances_per_identity


class LatencySettings(StrictModel):
    """How a latency budget is measured: runtime, threads, batch, seconds per candidate."""

    runtime: Literal["onnxruntime", "openvino"] = "onnxruntime"
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    batch: Annotated[int, Field(ge=1, le=4096)] = 1
    seconds: Annotated[float, Field(gt=0.0, le=60.0)] = 0.5


BudgetLimit = Literal["params", "macs", "latency"]
DEFAULT_FIT: tuple[BudgetLimit, ...] = ("params",)
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class BudgetConfig(StrictModel):
    """Edge budget: limits that must all hold after removal.

    Size: at most one of ``fit_split`` (the unpruned size of a shallower split),
    ``params``, ``bytes`` (fp32). Compute: ``macs`` per image. Speed:
    ``latency_ms``, the median edge latency measured here with ``latency``'s
    runtime, threads and batch. ``fit`` says which of ``fit_split``'s measures
    bound the edge (default its parameters; ``[params, macs]`` also its MACs,
    ``latency`` also its latency measured on this machine), ``fit_fraction``
    what share of them: one number for all (0.8: 20% headroom) or per limit
    (``{latency: 0.8}``: the same parameters, 20% faster).
    """

    fit_split: Annotated[int, Field(ge=1, le=8)] | None = None
    params: Annotated[int, Field(ge=1)] | None = None
    bytes: Annotated[int, Field(ge=1)] | None = None
    macs: Annotated[int, Field(ge=1)] | None = None
    latency_ms: Annotated[float, Field(gt=0.0)] | None = None
    fit: list[BudgetLimit] = Field(default_factory=lambda: list(DEFAULT_FIT), min_length=1)
    fit_fraction: Fraction | dict[BudgetLimit, Fraction] = Field(
        default=1.0,
        description="share of fit_split's measures the edge may use: one number for all, "
        "or per limit ({latency: 0.8}: 20% faster, same parameters)",
    )

    def fraction(self, limit: BudgetLimit) -> float:
        """The share of ``fit_split``'s ``limit`` the edge may use."""
        f = self.fit_fraction
        return float(f.get(limit, 1.0)) if isinstance(f, dict) else float(f)

    uplink_bits: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None,
        description="bits per image the uplink may carry: crossing channels x positions x "
        "patrol.uplink.bits (32 without quantization); the budget prunes the channels that "
        "cross the split until it fits",
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)

    @model_validator(mode="after")
    def _limits(self) -> BudgetConfig:
        sizes = [k for k in ("fit_split", "params", "bytes") if getattr(self, k) is not None]
        if len(sizes) > 1:
            raise ValueError(f"takes at most one of fit_split, params, bytes; found {sizes}")
        # The defaults themselves are allowed: a resolved recipe spells them out.
        defaults = {"fit": list(DEFAULT_FIT), "fit_fraction": 1.0}
        for name, default in defaults.items():
            given = name in self.model_fields_set and getattr(self, name) != default
            if self.fit_split is None and given:
                raise ValueError(f"{name} needs fit_split (the split whose measures it names)")
        if not sizes and self.macs is None and self.latency_ms is None and not self.uplink_bits:
            raise ValueError(
                "needs a limit: fit_split, params or bytes, and/or macs, latency_ms, uplink_bits"
            )
        if len(set(self.fit)) != len(self.fit):
            raise ValueError(f"fit lists a limit twice: {self.fit}")
        if self.fit_split is not None:
            for name, given in (("macs", self.macs), ("latency", self.latency_ms)):
                if name in self.fit and given is not None:
                    raise ValueError(f"{name} is given twice (fit: [{name}] and a number)")
        return self


class LipschitzConfig(StrictModel):
    enabled: bool = True
    alphas: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [5.0, 0.2, 0.01, 0.005]
    )
    sigma: Annotated[float, Field(gt=0.0)] = 0.1
    sample_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25


class AdversarialConfig(StrictModel):
    """The adversarial reconstruction term (Eq. 8-9) and the surrogate attacker it plays against.

    ``surrogate: mirror`` is the paper's attacker: one decoder that mirrors the
    edge, ``adversary_width`` channels at most, no refinement convolutions.
    It is cheap, and weak: on Fashion-MNIST it reached 10.3-10.6 dB during
    training, while the evaluation suite reached 18.8-20.4 dB on the same edges.
    The edge then learns to defeat that one weak inverter.
    ``surrogate: suite`` trains the attack suite's own decoder families
    (``attack.blackbox``: the same families and widths) together. The edge's
    term is the error of the strongest of them on each batch, so it cannot
    defeat one inverter and leave the others. Measured, it did not help
    either: the in-loop decoders still ended at 8.9-11.6 dB, fresh ones
    reached 18.9-25.5 dB, and the edge leaked 2.7 dB more than with no
    adversary (README, "Does PATROL beat plain pruning?").
    ``warmup_epochs`` fits the surrogate that many extra epochs before the
    first; with the suite, set ``adversary_every: 1`` so it is refit each
    epoch.
    """

    enabled: bool = True
    surrogate: Literal["mirror", "suite"] = "mirror"
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 0
    beta: Annotated[float, Field(ge=0.0)] = 4e-4
    adversary_every: Annotated[int, Field(ge=1)] = 10
    adversary_epochs: Annotated[int, Field(ge=1)] = 1
    adversary_lr: Annotated[float, Field(gt=0.0)] = 1e-3
    adversary_width: Annotated[int, Field(ge=4, le=1024)] = 64


def _plain_pruning_lipschitz() -> LipschitzConfig:
    return LipschitzConfig(enabled=False)


def _plain_pruning_adversarial() -> AdversarialConfig:
    return AdversarialConfig(enabled=False)


def _whole_bits(value: object) -> object:
    """Refuse what pydantic's lax literal matching would read as a width: ``true`` as 1
    and ``2.0`` as 2 (a YAML typo must not silently become a 1-bit uplink)."""
    if isinstance(value, (bool, float)):
        raise ValueError("Input should be 1, 2, 4 or 8 (a whole number)")
    return value


def _drop_removed(data: Any, key: str, harmless: Callable[[Any], bool], refusal: str) -> Any:
    """``data`` without the removed option ``key``: dropped where its value means what the
    schema does without it (so runs made while it existed still load), refused in one
    line where it asked for the removed behaviour (no recipe may silently lose it)."""
    if not isinstance(data, dict) or key not in data:
        return data
    data = dict(data)
    if not harmless(data.pop(key)):
        raise ValueError(refusal)
    return data


class UplinkConfig(StrictModel):
    """The quantized uplink: what crosses the split is ``bits``-bit codes per value.

    ``bits`` null keeps the fp32 uplink. With 8, 4, 2 or 1, the edge ends in a
    per-channel quantizer whose range is learned during mask fine-tuning and
    recovery (:mod:`patrol_compress.uplink.quant`); it starts at the
    ``init_quantile`` of each channel's values on the first 256 training images.
    The uplink then carries at most ``bits`` x channels x positions bits per
    image, the bound ``metrics.json`` and every export record.

    ``recalibrate`` sets the range afresh, at the same quantile of the pruned
    edge's features, after removal and before recovery. Why: the masks shrink
    the crossing features while they are fine-tuned, faster than the learned
    range follows, so the range the pruned edge inherits is wide (measured on
    the quickstart at 2 bits: 2.6-2.7x the features' 99.9% quantile right after
    removal, still 1.16-1.35x after 16 recovery epochs), and a wide 2-bit range
    spends its few levels on values that never occur.

    ``noise`` adds Gaussian noise of that many quantization steps (standard
    deviation) to every crossing value before it is rounded, in training and
    in inference, so the edge's codes are noisy and the uplink carries at most
    ``0.5*log2(1 + L**2/(4*noise**2))`` bits per value (``L = 2**bits - 1``;
    :func:`~patrol_compress.uplink.entropy.capacity_bits`), less than ``bits``
    once ``noise`` exceeds about ``L / (2*sqrt(4**bits - 1))``. An export's edge
    takes the noise as a second input, drawn by the deployer from a cryptographic
    source (:mod:`patrol_compress.uplink.noise` says why the graph draws none).
    """

    bits: Annotated[Literal[1, 2, 4, 8], BeforeValidator(_whole_bits)] | None = None
    init_quantile: Annotated[float, Field(gt=0.5, le=1.0)] = 0.999
    recalibrate: bool = Field(
        default=False,
        description="after removal, set the range afresh from the pruned edge's features "
        "(at init_quantile) before recovery",
    )
    noise: Annotated[float, Field(ge=0.0, le=16.0)] = Field(
        default=0.0,
        description="standard deviation, in quantization steps, of the Gaussian noise added to "
        "every crossing value before rounding (0: none); needs bits",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_rank(cls, data: Any) -> Any:
        """Runs made while ``rank`` (the leakage-aware crossing-channel ranking) existed
        still load: those that ranked by mask carry ``rank: mask``, which is what every
        uplink budget does now. ``rank: leakage`` is refused in one line: it measured no
        better than the mask ranking on the Fashion-MNIST uplink frontier and was
        removed (README, "The quantized uplink"), so no recipe may silently lose it."""
        return _drop_removed(
            data,
            "rank",
            lambda v: v == "mask",
            "rank was removed (the leakage ranking measured no better than ranking by "
            "mask; see the README's 'The quantized uplink'): leave it out",
        )

    @model_validator(mode="after")
    def _noise_needs_bits(self) -> UplinkConfig:
        if self.noise and self.bits is None:
            raise ValueError("noise needs bits: noise is added before the uplink is quantized")
        return self


class PatrolSettings(StrictModel):
    """The method's settings: what :class:`~patrol_compress.PatrolPruner` takes, whole.

    Everything here changes what PATROL computes per step; what only a job
    needs (whether to run it, where the edge ends, its budget, epochs, learning
    rates, recovery) is the recipe's (:class:`PatrolConfig`) or the pruner's
    arguments. Defaults are the shipped recipes' choice, plain budget-steered
    pruning: the Lipschitz and adversarial terms are off unless their section
    is given (README, "Does PATROL beat plain pruning?"). ``mask_lr`` None
    follows from the number of steps by the recipes' rule
    (:func:`~patrol_compress.pruning.steering.mask_lr_for`: a total pull on the
    masks near 0.6 of their start).
    """

    granularity: Literal["channel", "block"] = "channel"
    mask_lr: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None,
        description="FISTA's step on the masks; null: chosen from the number of steps so "
        "the total pull on a mask is about 0.6 of its start (the recipes' rule)",
    )
    mask_init: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    lambda1: Annotated[float, Field(ge=0.0)] = 1.0
    lambda2: Annotated[float, Field(ge=0.0)] = 10.0
    tau: Annotated[float, Field(ge=0.0)] = 0.0
    round_to: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1,
        description="keep every pruned channel group a multiple of this width (1: any width)",
    )
    rank: Literal["mask", "mask_per_cost"] = Field(
        default="mask",
        description="how the budget ranks channels: by mask, or by mask per share of the "
        "budget's parameter and MAC limits (removes the dearest channels sooner; at 224 px, "
        "with the masks still equal when the budget plans, it cut every residual stream to 8 "
        "channels: rank-1 41.4% against 91.7% by mask, see README)",
    )
    steer_until: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.6,
        description="fraction of the PATROL stage by which budget-planned masks reach 0",
    )
    lipschitz: LipschitzConfig = Field(default_factory=_plain_pruning_lipschitz)
    adversarial: AdversarialConfig = Field(default_factory=_plain_pruning_adversarial)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)

    @model_validator(mode="before")
    @classmethod
    def _removed_decorrelation(cls, data: Any) -> Any:
        """Runs made while ``decorrelation`` (NoPeek's distance-correlation term) existed
        still load: their resolved recipes carry it switched off, and the published
        Fashion-MNIST uplink frontier's runs are such runs. Switched on it is refused
        in one line: the term measured worse and was removed (README, "The quantized
        uplink"), so no recipe may silently lose it."""
        return _drop_removed(
            data,
            "decorrelation",
            lambda v: isinstance(v, dict) and v.get("enabled", False) is False,
            "decorrelation was removed (it measured worse on the uplink frontier; "
            "see the README's 'The quantized uplink'): leave it out or set enabled: false",
        )


FeatureAt = Literal["crossing", "embedding"]


def _at_crossing() -> list[FeatureAt]:
    return ["crossing"]


class DistillSettings(StrictModel):
    """What the distillation loss computes (:meth:`~patrol_compress.PatrolPruner.distill_from`).

    ``temperature``: Hinton's T; the logit term is the KL divergence of the
    student's T-softened class scores from the teacher's, times T^2 (so its
    gradient keeps its scale whatever T is), weighted by ``logit_weight``.
    The "logits" are what the task's cross-entropy sees: the class scores for
    classification and the identity scores of the training identities for
    re-id (the BNNeck head's classifier on the embedding; the teacher's are
    computed from its embedding in eval mode, where the head returns the
    embedding). ``feature_weight`` weighs the feature terms at
    ``feature_at``:

    - ``crossing``: the edge's output at the split. The pruned student has
      fewer channels there than the teacher, so the two are compared by a
      channel-agnostic statistic, Zagoruyko and Komodakis' attention map (the
      channel mean of the squared activations at each position, flattened and
      L2-normalised; squared difference summed over positions, averaged over
      the batch), not through a learned 1x1 adapter: an adapter has to be
      rebuilt (and its learning restarted) when removal changes the channel
      count, checkpointed for a resume and kept out of the export, and it can
      absorb the mismatch itself; the statistic needs none of that and is the
      same loss before and after removal.
    - ``embedding``: the feature the head takes, globally average-pooled (the
      re-id feature of the triplet loss; for classification the features
      before the classifier): 1 - cosine similarity per image when the widths
      agree; when they do not (a split after the last stage prunes the head's
      input), the squared difference of the batch's cosine-similarity matrices
      (Tung and Mori's similarity-preserving loss), again channel-agnostic.
    """

    temperature: Annotated[float, Field(gt=0.0, le=100.0)] = 4.0
    logit_weight: Annotated[float, Field(ge=0.0)] = 1.0
    feature_weight: Annotated[float, Field(ge=0.0)] = 0.0
    feature_at: list[FeatureAt] = Field(
        default_factory=_at_crossing,
        min_length=1,
        description="where the feature term compares student and teacher: crossing "
        "(the edge output at the split) and/or embedding (the features before the head)",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_place(cls, data: Any) -> Any:
        """``feature_at: crossing`` reads as ``[crossing]``."""
        if isinstance(data, dict) and isinstance(data.get("feature_at"), str):
            data = {**data, "feature_at": [data["feature_at"]]}
        return data

    @model_validator(mode="after")
    def _some_term(self) -> DistillSettings:
        if len(set(self.feature_at)) != len(self.feature_at):
            raise ValueError(f"feature_at lists a place twice: {self.feature_at}")
        if self.logit_weight == 0 and self.feature_weight == 0:
            raise ValueError("logit_weight and feature_weight are both 0: nothing to distill")
        return self


class DistillConfig(DistillSettings):
    """A recipe's ``patrol.recovery_distill:``: distil the unpruned teacher into the pruned model.

    Off by default: its effect on accuracy and on leakage has not been
    measured, so the shipped behaviour does not change. With ``enabled`` the
    recovery fine-tune adds the distillation loss (:class:`DistillSettings`)
    to its task loss (and to the privacy terms when ``recovery_privacy``
    keeps them); ``during_masks`` adds it to the PATROL (mask fine-tuning)
    stage as well. ``teacher`` null is the run's own unpruned target
    (``RUN/target/``); a path is a state dict of exactly the recipe's
    unpruned architecture (``.safetensors``, or a torch file read with
    ``weights_only=True``; never unpickled), like ``train.checkpoint``. The
    teacher is frozen, in eval mode, without gradients; its weights' sha256
    is recorded in ``stages.json`` (stage ``distill_teacher``) and
    ``metrics.json`` (``distill``), and a resume with a teacher of other
    weights is refused.

    Why ``patrol.recovery_distill`` and not ``patrol.recovery.distill``: the
    recovery's settings are the section's flat ``recovery_*`` fields
    (``recovery_epochs``, ``recovery_lr``, ``recovery_privacy``), so a nested
    ``recovery:`` mapping would be a second way to say them, and every
    existing recipe would have to move; the distillation is one more
    ``recovery_*`` field, a mapping like ``lipschitz`` or ``adversarial``.
    A resolved recipe leaves it out while it is all defaults, so the resolved
    recipe of a run without distillation is byte for byte what it was, and
    runs started before resume.
    """

    enabled: bool = False
    teacher: Path | None = Field(
        default=None,
        description="teacher weights (.safetensors, or a torch file loaded with "
        "weights_only=True) of the recipe's unpruned architecture; null: the run's target",
    )
    during_masks: bool = Field(
        default=False, description="also add the loss during the PATROL (mask fine-tuning) stage"
    )


class PatrolConfig(PatrolSettings):
    """A recipe's ``patrol:`` section: the method's settings plus what only the job needs.

    The job's fields: ``enabled``, ``split``, ``budget``, the stage's
    ``epochs`` and ``lr`` and the recovery fine-tune. Two defaults differ from
    :class:`PatrolSettings`, so that recipe files keep their meaning: a recipe
    that says nothing runs the paper's method (both privacy terms on; the
    shipped recipes switch them off explicitly) with ``mask_lr`` 1e-2 (null
    chooses it from the stage's steps, as the pruner does).
    """

    enabled: bool = True
    split: Annotated[int, Field(ge=1, le=8)] = 4
    epochs: Annotated[int, Field(ge=0, le=10_000)] = 10
    lr: Annotated[float, Field(gt=0.0)] = 3e-4
    mask_lr: Annotated[float, Field(gt=0.0)] | None = Field(
        default=1e-2,
        description="FISTA's step on the masks; null: chosen from the stage's steps so the "
        "total pull on a mask is about 0.6 of its start (the recipes' rule)",
    )
    budget: BudgetConfig | None = None
    recovery_epochs: Annotated[int, Field(ge=0)] = 2
    recovery_lr: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None, description="learning rate of the recovery fine-tune (default: train.lr)"
    )
    recovery_privacy: bool = Field(
        default=True,
        description="keep the Lipschitz and adversarial terms during recovery",
    )
    recovery_distill: DistillConfig = Field(
        default_factory=DistillConfig,
        description="knowledge distillation from the unpruned teacher during recovery "
        "(off by default: not measured yet)",
    )
    lipschitz: LipschitzConfig = Field(default_factory=LipschitzConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)

    def settings(self) -> PatrolSettings:
        """The method's part of this section (what the pruner takes)."""
        return PatrolSettings.model_validate(
            self.model_dump(include=set(PatrolSettings.model_fields))
        )


class ExportConfig(StrictModel):
    """Defaults of ``patrol-compress export`` for a run made from this recipe.

    ``split``: stages on the edge (default: the split the run saved); ``opset``:
    the ONNX opset. ``--split``/``--opset`` on the command line override them.
    """

    split: Annotated[int, Field(ge=1, le=8)] | None = None
    opset: Annotated[int, Field(ge=13, le=21)] = 17


class Recipe(StrictModel):
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: Annotated[int, Field(ge=-SEED_MAX, le=SEED_MAX)] = 0
    output_dir: Path | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    patrol: PatrolConfig = Field(default_factory=PatrolConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defenses: DefensesConfig = Field(default_factory=DefensesConfig)
    frontier: FrontierConfig = Field(default_factory=FrontierConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        p = self.patrol
        if p.budget and p.budget.fit_split is not None and p.budget.fit_split >= p.split:
            raise ValueError(
                f"patrol.budget.fit_split ({p.budget.fit_split}) must be shallower than "
                f"patrol.split ({p.split})"
            )
        if p.lipschitz.enabled and len(p.lipschitz.alphas) < p.split + 0:
            raise ValueError(
                f"patrol.lipschitz.alphas needs one weight per edge stage ({p.split}), "
                f"found {len(p.lipschitz.alphas)}"
            )
        return self

    def run_dir(self, override: Path | None = None) -> Path:
        """Where this recipe's outputs go: ``--out``, else ``output_dir``, else runs/<name>."""
        if override is not None:
            return override
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name


def parse_recipe(data: object, source: str = "<recipe>") -> Recipe:
    return validate(Recipe, data, source)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _resolve_extends(p: Path, seen: tuple[Path, ...] = ()) -> object:
    """``extends: other.yaml`` (relative to the file) deep-merges this file over another."""
    if p.resolve() in seen:
        chain = " -> ".join(str(s) for s in (*seen, p.resolve()))
        raise RecipeError(f"{p}: 'extends' forms a cycle ({chain})")
    data = read_yaml(p)
    if not isinstance(data, dict) or "extends" not in data:
        return data
    parent_name = data.pop("extends")
    if not isinstance(parent_name, str):
        raise RecipeError(f"{p}: extends: expected a file name, found {short(parent_name)}")
    parent = _resolve_extends(p.parent / parent_name, (*seen, p.resolve()))
    if not isinstance(parent, dict):
        raise RecipeError(f"{p.parent / parent_name}: expected a YAML mapping at the top level")
    return _deep_merge(parent, data)


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate a recipe file; every problem raises :class:`RecipeError`.

    A recipe may start from another with ``extends: base.yaml``: mappings are
    merged key by key, anything else (lists, scalars) replaces the base's value.
    """
    p = Path(path)
    return parse_recipe(_resolve_extends(p), str(p))


def with_privacy_terms(recipe: Recipe) -> Recipe:
    """``recipe`` with PATROL's Lipschitz and adversarial terms on, at their configured weights.

    The shipped recipes turn both off, because plain budget-steered pruning
    measured best (README, "Does PATROL beat plain pruning?"); benchmarks that
    study the paper's method, and users who want it, turn them back on here
    or with ``enabled: true`` in the recipe.
    """
    patrol = recipe.patrol.model_copy(
        update={
            "lipschitz": recipe.patrol.lipschitz.model_copy(update={"enabled": True}),
            "adversarial": recipe.patrol.adversarial.model_copy(update={"enabled": True}),
        }
    )
    return recipe.model_copy(update={"patrol": patrol})


_PATROL_KEY_ORDER = (
    "enabled",
    "split",
    "granularity",
    "epochs",
    "lr",
    "mask_lr",
    "mask_init",
    "lambda1",
    "lambda2",
    "tau",
    "budget",
    "round_to",
    "rank",
    "steer_until",
    "recovery_epochs",
    "recovery_lr",
    "recovery_privacy",
    "recovery_distill",
    "lipschitz",
    "adversarial",
)
"""The ``patrol:`` keys in the order resolved recipes have always listed them.

:class:`PatrolConfig` now extends :class:`PatrolSettings`, which puts the
method's fields first; dumping in the old order keeps ``recipe.resolved.yaml``
byte for byte what it was, so a run started before resumes after (a resumed
run must have the same resolved recipe)."""


def dump_recipe(recipe: Recipe) -> str:
    data = recipe.model_dump(mode="json")
    patrol = data["patrol"]
    if recipe.patrol.recovery_distill == DistillConfig():
        del patrol["recovery_distill"]  # all defaults: the resolved recipe stays what it was
    data["patrol"] = {k: patrol[k] for k in _PATROL_KEY_ORDER if k in patrol} | patrol
    return yaml.safe_dump(data, sort_keys=False)
