"""The quantized uplink's parts: codes, decoding, packing, the bound, and pruning its channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from patrol_compress.uplink import (
    UplinkPruner,
    UplinkQuant,
    bound_bits,
    capacity_bits,
    empirical_entropy_bits,
    pack,
    packed_bytes,
    unpack,
    uplink_report,
)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codes_decode_to_exactly_what_training_computes(bits: int) -> None:
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 5, 3, 3)) * 3
    q = UplinkQuant(5, bits)
    q.calibrate(x)
    fake = q(x)
    codes = q.codes(x)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert torch.equal(q.decoder()(codes), fake)
    # Every value is one of 2**bits levels of its channel.
    for c in range(5):
        assert len(torch.unique(fake[:, c])) <= 2**bits


def test_rounding_passes_gradients_to_the_edge_and_the_range() -> None:
    x = (torch.rand(8, 3, 2, 2) * 2).requires_grad_(True)
    q = UplinkQuant(3, 2)
    q.calibrate(x.detach())
    q(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # straight through the rounding
    assert q.hi.grad is not None and q.hi.grad.abs().sum() > 0  # the range learns
    assert q.lo.grad is None  # non-negative features: the lower end stays 0


def test_signed_features_learn_both_ends() -> None:
    x = torch.randn(16, 2, 2, 2)
    q = UplinkQuant(2, 4)
    q.calibrate(x)
    assert bool(q.signed) and (q.lo < 0).all()
    q(x).sum().backward()
    assert q.lo.grad is not None


def test_the_deployers_noise_is_standard_normal_and_fresh() -> None:
    """``draw_noise`` (os.urandom, Box-Muller): Kolmogorov-Smirnov against N(0, 1) at a
    false-alarm rate of 1e-9 (so it does not flake), and no two draws alike."""
    from scipy.stats import kstest

    from patrol_compress.edge_noise import draw_noise

    values = draw_noise((50, 40, 50))
    assert values.shape == (50, 40, 50) and values.dtype == np.float32
    assert kstest(values.ravel(), "norm").pvalue > 1e-9
    assert kstest(values.ravel() * 1.1, "norm").pvalue < 1e-9  # it tells a 10% scale apart
    assert not np.array_equal(draw_noise((7,)), draw_noise((7,)))
    assert draw_noise((3,)).shape == (3,)  # an odd count: half a pair is dropped


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_round_trips_and_counts_bytes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=(11, 2, 2), dtype=np.uint8)
    blob = pack(codes, bits)
    assert len(blob) == packed_bytes(codes.size, bits) == -(-codes.size * bits // 8)
    assert np.array_equal(unpack(blob, bits, codes.shape), codes)
    if bits < 8:
        with pytest.raises(ValueError, match="above"):
            pack(np.full(3, 2**bits, dtype=np.uint8), bits)


def test_bound_and_entropy_estimate() -> None:
    assert bound_bits((64, 2, 2), 4) == 1024
    constant = np.zeros((50, 2, 1, 1), dtype=np.uint8)
    assert empirical_entropy_bits(constant) == 0.0
    coin = (np.arange(40) % 2).astype(np.uint8).reshape(40, 1, 1, 1)
    coin = np.repeat(coin, 2, axis=1)  # two positions, each a fair binary variable
    assert empirical_entropy_bits(coin) == pytest.approx(2.0)
    report = uplink_report(coin, 1)
    assert report["uplink_bits_max"] == 2 and "estimate" in report["entropy_note"]


def test_noise_makes_seeded_noisy_codes_that_still_decode_to_the_training_values() -> None:
    x = torch.relu(torch.randn(64, 3, 2, 2)) * 3
    q = UplinkQuant(3, 2, noise=1.0)
    q.calibrate(x)
    torch.manual_seed(1)
    codes = q.codes(x)
    torch.manual_seed(1)
    assert torch.equal(q.decoder()(codes), q(x))  # the same draw: the same values
    torch.manual_seed(2)
    assert not torch.equal(q.codes(x), codes)  # another draw: other codes
    assert int(codes.max()) <= 3
    quiet = UplinkQuant(3, 2)
    quiet.load_state_dict(q.state_dict())
    # One step of noise moves about 2 in 3 codes in this range (measured here, 64 images).
    assert (codes != quiet.codes(x)).float().mean() > 0.3
    y = x.clone().requires_grad_(True)
    q(y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0  # still straight through


def _discrete_mutual_information(bits: int, noise: float) -> float:
    """I(S; Y) in bits for S uniform over the levels, Y = round(clip(S + noise * N, 0, L))."""
    from math import erf, sqrt

    levels = 2**bits - 1

    def cdf(t: float) -> float:
        return 0.5 * (1.0 + erf(t / (noise * sqrt(2.0))))

    rows = []
    for s in range(levels + 1):
        edges = [-np.inf, *[k + 0.5 - s for k in range(levels)], np.inf]
        rows.append([cdf(b) - cdf(a) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    p = np.array(rows) / (levels + 1)
    py = p.sum(axis=0)
    ps = p.sum(axis=1)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / np.outer(ps, py)[nz])).sum())


@pytest.mark.parametrize(("bits", "noise"), [(1, 0.5), (2, 0.5), (2, 1.0), (4, 2.0)])
def test_the_noisy_capacity_bounds_what_crosses(bits: int, noise: float) -> None:
    per_value = 0.5 * np.log2(1 + (2**bits - 1) ** 2 / (4 * noise**2))
    assert capacity_bits((3, 2, 2), bits, noise) == pytest.approx(12 * min(bits, per_value))
    assert capacity_bits((3, 2, 2), bits, 0.0) == bound_bits((3, 2, 2), bits)
    assert capacity_bits((3, 2, 2), bits, 1e-3) == bound_bits((3, 2, 2), bits)  # bits cap it
    # An actual input law through the actual channel carries no more than the bound says.
    assert _discrete_mutual_information(bits, noise) <= min(bits, per_value) + 1e-9
    report = uplink_report(np.zeros((5, 3, 2, 2), dtype=np.uint8), bits, noise)
    expected = capacity_bits((3, 2, 2), bits, noise)
    assert report["uplink_capacity_bits"] == pytest.approx(expected, abs=0.05)


def test_pruning_the_stream_narrows_the_uplink_range() -> None:
    """Registered with torch-pruning like a BN: removing a channel of the conv feeding the
    uplink removes that channel's range, and the codes of the kept channels do not change."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), UplinkQuant(6, 4), nn.Conv2d(6, 2, 1))
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        net[2].calibrate(net[1](net[0](x)))
        before = net[2].codes(net[1](net[0](x)))
    graph = tp.DependencyGraph().build_dependency(
        net, example_inputs=x, customized_pruners={UplinkQuant: UplinkPruner()}
    )
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, idxs=[1, 4])
    group.prune()
    assert net[2].hi.numel() == 4 and net[3].in_channels == 4
    with torch.no_grad():
        after = net[2].codes(net[1](net[0](x)))
    assert torch.equal(after, before[:, [0, 2, 3, 5]])


# ------------------------------------------------------------------ through the recipe

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from patrol_compress import api  # noqa: E402
from patrol_compress.cli.app import app  # noqa: E402
from patrol_compress.uplink import find_uplink  # noqa: E402

from .helpers import tiny_recipe_dict, write_recipe  # noqa: E402

BITS = 2
CHANNELS_ALLOWED = 8
POSITIONS = 4  # the tiny ResNet's 2x2 map at split 4, 32 px


def uplink_recipe(root: Path, **budget: Any) -> dict[str, Any]:
    data = tiny_recipe_dict(root, lipschitz={"enabled": False}, adversarial={"enabled": False})
    data["train"]["epochs"] = 1
    data["patrol"]["uplink"] = {"bits": BITS}
    data["patrol"]["budget"] = {
        "fit_split": 2,
        "uplink_bits": BITS * POSITIONS * CHANNELS_ALLOWED,
        **budget,
    }
    return data


def prune_on_one_thread(data: dict[str, Any]) -> None:
    """Prune ``data`` on one torch thread, then give the caller back its thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        api.prune(data, quiet=True)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uplink_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("uplink")
    prune_on_one_thread(uplink_recipe(root))
    return root / "run"


def test_the_budget_prunes_the_crossing_channels_until_the_bits_fit(uplink_run: Path) -> None:
    metrics = json.loads((uplink_run / "metrics.json").read_text())
    after = metrics["edge"]["after"]
    channels, h, w = after["output_shape"]
    assert channels <= CHANNELS_ALLOWED and h * w == POSITIONS
    assert after["uplink_bits_max"] == channels * h * w * BITS <= BITS * POSITIONS * 8
    assert after["bytes_sent"] == -(-channels * h * w * BITS // 8)  # packed
    assert metrics["budget"]["uplink_bits"] == BITS * POSITIONS * CHANNELS_ALLOWED
    assert after["params"] <= metrics["budget"]["params"]  # the other limits still hold
    up = metrics["uplink"]
    assert up["uplink_bits_max"] == after["uplink_bits_max"]
    # The estimate's arithmetic is tested on known codes above; here only its place in the
    # run. Not "> 0": this 1-epoch tiny model's crossing features barely vary across images
    # (per-channel std 1e-4 to 1e-2, measured), so whether any code flips between images
    # depends on float rounding (0 bits on this machine, a few on another).
    assert 0 <= up["empirical_entropy_bits"] <= up["uplink_bits_max"]
    assert up["entropy_images"] > 0
    assert "estimate" in up["entropy_note"]
    # Only the crossing channels had to go for the uplink: an inner group keeps more.
    before = metrics["edge"]["before"]["output_shape"][0]
    assert channels < before


def test_a_saved_quantized_run_reloads_to_the_same_function(uplink_run: Path) -> None:
    model = api.load_model(uplink_run)
    quant = find_uplink(model)
    assert quant is not None and quant.bits == BITS and bool(quant.initialised)
    x = torch.rand(3, 3, 32, 32)
    edge, _ = api.partitions(uplink_run)
    with torch.no_grad():
        sent = edge(x)
    for c in range(sent.shape[1]):
        assert len(torch.unique(sent[:, c])) <= 2**BITS  # every value one of 2**bits levels


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_the_export_sends_uint8_codes_and_the_cloud_decodes_them(
    uplink_run: Path, tmp_path: Path, target: str
) -> None:
    run = Path(shutil.copytree(uplink_run, tmp_path / "run"))
    manifest = api.export(run, split=4, target=target)
    assert manifest["edge_output_dtype"] == "uint8"
    up = manifest["uplink"]
    channels = manifest["edge_output_shape"][0]
    assert up["bits"] == BITS and len(up["step"]) == len(up["lo"]) == channels
    assert up["uplink_bits_max"] == channels * POSITIONS * BITS
    assert (
        manifest["edge"]["bytes_sent"] == up["packed_bytes"] == -(-channels * POSITIONS * BITS // 8)
    )
    if target == "onnx":
        import onnxruntime as ort

        folder = run / "export" / "onnx-split4-fp32"
        edge = ort.InferenceSession(str(folder / "edge.onnx"), providers=["CPUExecutionProvider"])
        cloud = ort.InferenceSession(str(folder / "cloud.onnx"), providers=["CPUExecutionProvider"])
        assert cloud.get_inputs()[0].type == "tensor(uint8)"
        x = torch.rand(4, 3, 32, 32)
        codes = edge.run(None, {edge.get_inputs()[0].name: x.numpy()})[0]
        assert codes.dtype == np.uint8 and int(codes.max()) <= 2**BITS - 1
        model = api.load_model(run)
        with torch.no_grad():
            expected = model(x).numpy()
        out = cloud.run(None, {cloud.get_inputs()[0].name: codes})[0]
        assert np.abs(out - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


TINY_ATTACK: dict[str, Any] = {
    "max_eval_images": 8,
    "blackbox": {"families": ["upsample"], "epochs": 1, "base_width": 8, "max_images": 48},
    "adaptive": {"families": ["upsample"], "epochs": 1, "base_width": 8, "max_images": 48},
    "recogniser": {"steps": 2, "width": 4},
}
"""An attack suite small enough for a test: it checks what is attacked, not how well."""


def test_the_adaptive_attack_reads_what_the_cloud_receives(
    uplink_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(uplink_run, tmp_path / "run"))
    api.export(run, split=4, target="onnx")
    report = api.attack(run, ["blackbox", "adaptive"], config=TINY_ATTACK, out=tmp_path / "a")
    info = report["attacks"]["adaptive"]["info"]
    assert info["sent_dtype"] == "uint8" and info["bytes_sent"] == report["edge"]["bytes_sent"]
    assert report["edge"]["uplink_bits_max"] <= BITS * POSITIONS * CHANNELS_ALLOWED


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"uplink": {"bits": 3}}, "patrol.uplink.bits"),
        ({"uplink": {"bits": 0}}, "patrol.uplink.bits"),
        ({"uplink": {"bits": True}}, "patrol.uplink.bits"),  # lax matching read it as 1
        ({"uplink": {"bits": 2.0}}, "patrol.uplink.bits"),
        ({"uplink": {"bits": 2, "noise": -1}}, "patrol.uplink.noise"),
        ({"uplink": {"bits": None, "noise": 1.0}}, "noise needs bits"),
        ({"budget": {"fit_split": 2, "uplink_bits": 0}}, "patrol.budget.uplink_bits"),
        ({"budget": {"fit_split": 2, "uplink_bits": -8}}, "patrol.budget.uplink_bits"),
        ({"budget": {"fit_split": 2, "uplink_bits": 2.5}}, "patrol.budget.uplink_bits"),
        # No width meets 3 bits: the line names the field and the least it must be.
        (
            {"budget": {"fit_split": 2, "uplink_bits": 3}},
            f"patrol.budget.uplink_bits must be at least {BITS * POSITIONS}",
        ),
    ],
)
def test_bad_uplink_settings_are_one_line_before_any_training(
    tmp_path: Path, patch: dict[str, Any], words: str
) -> None:
    data = uplink_recipe(tmp_path)
    data["patrol"].update(patch)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")  # an earlier run's file must not be touched
    result = CliRunner().invoke(
        app, ["prune", str(write_recipe(tmp_path, data)), "--out", str(out), "--force"]
    )
    assert result.exit_code == 2, result.output
    assert words in result.output and result.output.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        # The bound holds only where the quantizer sits: elsewhere more would be sent.
        (
            ["--split", "3", "--target", "onnx"],
            "quantized to 2 bits at split 4: export at split 4, not 3",
        ),
        # Refused for the uplink, not for a missing TensorRT: an install would not help.
        (["--target", "trt"], "trt fp32 export of such a model is not supported"),
        (
            ["--target", "onnx", "--precision", "int8"],
            "onnx int8 export of such a model is not supported",
        ),
    ],
)
def test_an_export_that_would_break_the_bound_is_one_line(
    uplink_run: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    run = Path(shutil.copytree(uplink_run, tmp_path / "run"))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = CliRunner().invoke(app, ["export", str(run), *args])
    assert result.exit_code == 2, result.output
    assert words in result.output and result.output.count("\n") == 1, result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("noisy")
    data = uplink_recipe(root)
    data["patrol"]["uplink"]["noise"] = 1.0
    prune_on_one_thread(data)
    return root / "run"


def test_a_noisy_uplink_records_its_capacity_and_reloads_noisy(noisy_run: Path) -> None:
    up = json.loads((noisy_run / "metrics.json").read_text())["uplink"]
    values = up["uplink_bits_max"] // BITS
    assert up["noise"] == 1.0
    assert up["uplink_capacity_bits"] == pytest.approx(values * 0.5 * np.log2(1 + 9 / 4), abs=0.1)
    quant = find_uplink(api.load_model(noisy_run))
    assert quant is not None and quant.noise == 1.0  # the pruned, reloaded edge stays noisy


def _edge_session(folder: Path, target: str) -> Any:
    """``(images, normal) -> codes`` on the artifact's own runtime."""
    if target == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(
            str(folder / "edge.onnx"), providers=["CPUExecutionProvider"]
        )
        assert [i.name for i in session.get_inputs()] == ["input", "noise"]
        return lambda x, n: session.run(None, {"input": x, "noise": n})[0]
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(
        str(folder / "edge.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    # OpenVINO may name the port after a fused node too: the library reads every name.
    from patrol_compress.edge_noise import ov_inputs

    assert [name for name, _ in ov_inputs(compiled.inputs)] == ["input", "noise"]
    return lambda x, n: compiled({"input": x, "noise": n})[compiled.output(0)]


@pytest.mark.parametrize(
    ("target", "precision"), [("onnx", "fp32"), ("openvino", "fp32"), ("onnx", "fp16")]
)
def test_a_noisy_edge_exports_with_its_noise_as_an_input(
    noisy_run: Path, tmp_path: Path, target: str, precision: str
) -> None:
    """The exported edge takes the noise as its second input (the graph draws none: see
    ``patrol_compress.uplink.noise``), codes exactly as torch does for the same draw, and is
    noisy only through that input."""
    from patrol_compress.uplink.noise import draw_noise, given_noise_features

    if target == "openvino":
        pytest.importorskip("openvino")
    run = Path(shutil.copytree(noisy_run, tmp_path / "run"))
    manifest = api.export(run, split=4, target=target, precision=precision)
    up = manifest["uplink"]
    shape = manifest["edge_output_shape"]
    assert up["noise_shape"] == ["batch", *shape] and up["noise_dtype"] == "float32"
    values = int(np.prod(shape))
    assert (
        up["noise"] == 1.0 and up["noise_input"] == "noise" and "cryptographic" in up["noise_draw"]
    )
    assert up["uplink_bits_max"] == values * BITS
    assert up["uplink_capacity_bits"] == pytest.approx(values * 0.5 * np.log2(1 + 9 / 4), abs=0.1)
    run_edge = _edge_session(run / "export" / f"{target}-split4-{precision}", target)
    x = torch.rand(16, 3, 32, 32)
    normal = draw_noise((16, *shape))
    codes = run_edge(x.numpy(), normal)
    edge, _ = api.partitions(run)
    decode = find_uplink(api.load_model(run))
    assert decode is not None
    expected = given_noise_features(edge, x, torch.from_numpy(normal))
    sent = decode.decoder()(torch.from_numpy(codes))
    step = float(decode.decoder().step.max())
    # Same image, same draw: torch's codes but for boundary ties (as the exporters' parity).
    assert float((sent - expected).abs().max()) <= step * 1.001
    ties = 0.01 if precision == "fp32" else 0.05
    assert float(((sent - expected).abs() > 1e-6).float().mean()) <= ties
    if target == "onnx":  # the toolkit's own runner names what is missing, in one line
        from patrol_compress.errors import ExportError
        from patrol_compress.exporters.onnx import run_onnxruntime

        edge_file = run / "export" / f"onnx-split4-{precision}" / "edge.onnx"
        with pytest.raises(ExportError, match="takes a 'noise' input"):
            run_onnxruntime(edge_file, x.numpy())
    # The noise is the input's: zeros repeat, two fresh draws differ.
    zeros = np.zeros_like(normal)
    assert np.array_equal(run_edge(x.numpy(), zeros), run_edge(x.numpy(), zeros))
    assert not np.array_equal(run_edge(x.numpy(), draw_noise(normal.shape)), codes)
    # A draw of another batch fails instead of broadcasting: one draw reused across images,
    # or many noisy copies of one image. A fresh session each: a failed OpenVINO request
    # keeps the inputs it was given.
    for images, draws in ((16, 1), (1, 16)):
        fresh = _edge_session(run / "export" / f"{target}-split4-{precision}", target)
        with pytest.raises(Exception):  # noqa: B017 - each runtime raises its own type
            fresh(x[:images].numpy(), normal[:draws])


def _chi_square(codes: np.ndarray, scaled: np.ndarray, noise: float, levels: int) -> float:
    """Pearson's statistic of ``codes`` (draws x positions) against the exact law of
    ``round(clip(scaled + noise * N(0, 1), 0, levels))`` at each position."""
    from scipy.stats import norm

    total = 0.0
    for k in range(levels + 1):
        upper = norm.cdf((k + 0.5 - scaled) / noise) if k < levels else 1.0
        lower = norm.cdf((k - 0.5 - scaled) / noise) if k > 0 else 0.0
        expected = len(codes) * (upper - lower)
        observed = (codes == k).sum(axis=0)
        total += float(((observed - expected) ** 2 / expected).sum())
    return total


def test_the_exported_noisy_codes_follow_the_noise_law(noisy_run: Path, tmp_path: Path) -> None:
    """Over fresh draws of the deployer's noise, the exported edge's codes for one image are
    distributed as the noise says: Pearson's test against the exact probabilities (Gaussian CDF
    differences around each pre-noise value) at a false-alarm rate of 1e-9, so it does not
    flake; the same test refuses the codes of zero noise, so it can fail."""
    from scipy.stats import chi2

    from patrol_compress.uplink.noise import draw_noise

    run = Path(shutil.copytree(noisy_run, tmp_path / "run"))
    manifest = api.export(run, split=4, target="onnx")
    shape = manifest["edge_output_shape"]
    run_edge = _edge_session(run / "export" / "onnx-split4-fp32", "onnx")
    draws = 4000
    image = torch.rand(1, 3, 32, 32).expand(draws, 3, 32, 32).contiguous()
    edge, _ = api.partitions(run)
    quant = find_uplink(edge)
    assert quant is not None
    quant.emit = "bypass"
    with torch.no_grad():
        lo, hi = quant.bounds()
        levels = quant.levels
        feats = edge(image[:1])
        scaled = (torch.minimum(torch.maximum(feats, lo), hi) - lo) / ((hi - lo) / levels)
    scaled_flat = scaled.flatten().numpy().astype(np.float64)
    cells = scaled_flat.size * levels  # degrees of freedom: positions x (levels + 1 - 1)
    bound = float(chi2.isf(1e-9, cells))
    noisy = run_edge(image.numpy(), draw_noise((draws, *shape))).reshape(draws, -1)
    assert _chi_square(noisy, scaled_flat, 1.0, levels) < bound
    silent = run_edge(image.numpy(), np.zeros((draws, *shape), np.float32)).reshape(draws, -1)
    assert _chi_square(silent, scaled_flat, 1.0, levels) > bound


def test_the_informed_attacker_reads_the_clouds_output_on_the_same_noisy_draw(
    noisy_run: Path,
) -> None:
    """The cloud's output handed to the informed attacker is computed from the codes the
    decoder reads (one draw), not from a second query of the noisy edge."""
    from patrol_compress.attacks.informed import informed_features

    model = api.load_model(noisy_run).eval()
    edge, cloud = api.partitions(noisy_run)
    features = informed_features(model, 4, torch.device("cpu"))
    x = torch.rand(6, 3, 32, 32)
    f = features(x)
    channels = edge(x).shape[1]
    with torch.no_grad():
        expected = cloud(f[:, :channels]).reshape(6, -1)
    assert f.shape[1] == channels + expected.shape[1]
    assert torch.allclose(f[:, channels:, 1, 1], expected, atol=1e-6)
    assert not torch.equal(f, features(x))  # the edge draws fresh noise per query
    with torch.no_grad():
        redraw = cloud(edge(x)).reshape(6, -1)
    assert not torch.allclose(f[:, channels:, 0, 0], redraw, atol=1e-6)


def test_the_adaptive_attack_and_the_bench_feed_a_noisy_edge_fresh_noise(
    noisy_run: Path, tmp_path: Path
) -> None:
    """``attack --artifact`` probes the noisy export with one draw fed to both edges, then
    reads what the cloud receives (fresh noise per image); ``bench`` times the graph with its
    noise bound like the image."""
    from patrol_compress.attacks.adaptive import (
        artifact_features,
        edge_runner,
        split_code,
        verified_edge,
    )

    run = Path(shutil.copytree(noisy_run, tmp_path / "run"))
    api.export(run, split=4, target="onnx")
    report = api.attack(run, ["adaptive"], config=TINY_ATTACK, out=tmp_path / "a")
    info = report["attacks"]["adaptive"]["info"]
    assert info["sent_dtype"] == "uint8"
    x = torch.rand(4, 3, 32, 32)
    folder = run / "export" / "onnx-split4-fp32"
    files, manifest = verified_edge(folder, 4)
    features = artifact_features(edge_runner(files, 1), split_code(manifest, folder))
    assert not torch.equal(features(x), features(x))  # a fresh draw per call
    runtimes = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        runtimes.append("openvino")  # reads edge.onnx here: two inputs, both reshaped
    except ImportError:
        pass
    for runtime in runtimes:
        for mode in ("latency", "throughput"):
            args = ["--batch", "1,2", "--runs", "3", "--warmup", "1", "--threads", "1"]
            result = CliRunner().invoke(
                app, ["bench", str(folder), "--runtime", runtime, "--mode", mode, *args]
            )
            assert result.exit_code == 0, result.output
            assert runtime in result.output


def test_a_model_with_its_own_forward_cannot_take_the_quantizer() -> None:
    from patrol_compress import PatrolPruner
    from patrol_compress.errors import ModelError
    from patrol_compress.testing.cnns import vgg11_bn

    with pytest.raises(ModelError, match="uplink.bits"):
        PatrolPruner(
            vgg11_bn(),
            torch.rand(2, 3, 32, 32),
            split="features.14",
            config={"uplink": {"bits": 4}},
        )


def test_uplink_plan_takes_only_crossing_channels_and_keeps_round_to() -> None:
    """The uplink limit removes the lowest-ranked channels of the split's stream and nothing
    else; kept widths stay multiples of round_to; a limit below one such width is refused."""
    from patrol_compress.pruning.budget import UplinkLimit, ranking_scores, uplink_plan
    from patrol_compress.pruning.structure import ChannelStructure

    from .helpers import tiny_resnet

    model = tiny_resnet()
    example = torch.rand(2, 3, 32, 32)
    structure = ChannelStructure(model, 4, 1.0, example, round_to=4)
    crossing = structure.crossing
    assert len(crossing.groups) == 1 and crossing.fixed == 0
    stream = crossing.groups[0]
    width = len(structure.mg.groups[stream][0].idxs)
    scores = ranking_scores(structure.mg)
    limit = UplinkLimit(bits=2 * POSITIONS * 10, value_bits=2, positions=POSITIONS)
    plan = uplink_plan(scores, crossing, limit, round_to=4)
    assert plan is not None
    assert all(not idxs for g, idxs in enumerate(plan) if g != stream)
    kept = width - len(plan[stream])
    assert kept == 8  # at most 10 fit; a multiple of 4
    lowest = sorted(range(width), key=lambda i: float(scores[stream][i]))[: width - kept]
    assert sorted(plan[stream]) == sorted(lowest)
    assert uplink_plan(scores, crossing, UplinkLimit(2 * POSITIONS * 3, 2, POSITIONS), 4) is None


def test_recalibrate_sets_the_range_afresh_from_the_pruned_edge(tmp_path: Path) -> None:
    """``uplink.recalibrate``: the range the final edge keeps (no recovery to move it) is the
    pruned edge's own quantile on the calibration images, not the one removal inherited."""
    import copy

    from patrol_compress.config import load_recipe
    from patrol_compress.data import build_data
    from patrol_compress.pipeline import calibration_images
    from patrol_compress.uplink import calibrate_uplink

    data = uplink_recipe(tmp_path)
    data["patrol"]["uplink"]["recalibrate"] = True
    data["patrol"]["recovery_epochs"] = 0
    prune_on_one_thread(data)
    run = tmp_path / "run"
    inherited = find_uplink(api.load_model(run / "pruned"))
    final = find_uplink(api.load_model(run))
    assert inherited is not None and final is not None
    assert not torch.allclose(inherited.hi, final.hi)  # the masks shrank the features
    recipe = load_recipe(write_recipe(tmp_path, data, "again.yaml"))
    fresh = copy.deepcopy(api.load_model(run / "pruned"))
    assert calibrate_uplink(fresh, 4, calibration_images(build_data(recipe.data)), again=True)
    quant = find_uplink(fresh)
    assert quant is not None
    torch.testing.assert_close(quant.hi, final.hi)
    torch.testing.assert_close(quant.lo, final.lo)
    assert not calibrate_uplink(fresh, 4, torch.zeros(1, 3, 32, 32))  # learned: kept


def test_a_run_recipe_from_the_removed_decorrelation_term_loads_only_switched_off(
    tmp_path: Path,
) -> None:
    """The published frontier's runs carry ``decorrelation: {enabled: false}``: they load.
    A recipe that switches the removed term on is refused in one line, naming it."""
    from patrol_compress.errors import RecipeError
    from patrol_compress.recipe import parse_recipe

    data = uplink_recipe(tmp_path)
    data["patrol"]["decorrelation"] = {"enabled": False, "weight": 1.0}
    assert parse_recipe(data).patrol.uplink.bits == BITS
    data["patrol"]["decorrelation"] = {"enabled": True, "weight": 1.0}
    with pytest.raises(RecipeError, match="decorrelation was removed") as err:
        parse_recipe(data)
    assert "\n" not in str(err.value)


def test_a_run_recipe_from_the_removed_leakage_ranking_loads_only_ranked_by_mask(
    tmp_path: Path,
) -> None:
    """The leakage frontier's plain and narrow runs carry ``uplink.rank: mask``: they load,
    meaning what every uplink budget does now. ``rank: leakage`` is refused in one line."""
    from patrol_compress.errors import RecipeError
    from patrol_compress.recipe import parse_recipe

    data = uplink_recipe(tmp_path)
    data["patrol"]["uplink"]["rank"] = "mask"
    assert parse_recipe(data).patrol.uplink.bits == BITS
    data["patrol"]["uplink"]["rank"] = "leakage"
    with pytest.raises(RecipeError, match="patrol.uplink.*rank was removed") as err:
        parse_recipe(data)
    assert "\n" not in str(err.value)
