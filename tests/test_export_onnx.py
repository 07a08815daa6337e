"""ONNX export: parity with torch, dynamic batch, fp16, pruned shapes, manifest, atomicity."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest
import torch
import torch_pruning as tp
from onnx import TensorProto, numpy_helper
from typer.testing import CliRunner

from patrol_compress.errors import ArtifactError, ExportError, ModelError, OutputExistsError
from patrol_compress.exporters import MANIFEST, export_partitions, read_manifest, verify_manifest
from patrol_compress.exporters.fp16 import convert_to_fp16
from patrol_compress.exporters.onnx import run_onnxruntime
from patrol_compress.exporters.parity import (
    FP16_ATOL,
    FP16_RTOL,
    FP32_ATOL,
    FP32_RTOL,
    check_parity,
)
from patrol_compress.metrics.flops import count_macs, count_params
from patrol_compress.models import BlockNet, split, wrap_module
from patrol_compress.recipe import BlocksConfig
from patrol_compress.registry import RegistryError
from patrol_compress.testing.tiny import randomize_bn, tiny_mobilenet

from .helpers import tiny_model_info, tiny_resnet

SHAPE = (3, 32, 32)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """For module-scoped fixtures, which run outside conftest's per-test setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_parts(model: BlockNet, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edge, cloud = split(model, k)
    with torch.no_grad():
        mid = edge(torch.from_numpy(x))
        return mid.numpy(), cloud(mid).numpy()


def conv_shape(model: torch.nn.Module, name: str) -> tuple[int, ...]:
    return tuple(cast(torch.nn.Conv2d, model.get_submodule(name)).weight.shape)


def batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[BlockNet, Path]:
    torch.manual_seed(0)
    model = tiny_resnet()
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    with one_thread():
        export_partitions(model, 2, out, "onnx", "fp32", SHAPE)
    return model, out


@pytest.mark.parametrize("n", [1, 3])
def test_fp32_parity_at_other_batch_sizes(fp32_artifact: tuple[BlockNet, Path], n: int) -> None:
    model, out = fp32_artifact
    x = batch(n)
    mid_ref, out_ref = torch_parts(model, 2, x)
    mid = run_onnxruntime(out / "edge.onnx", x)
    np.testing.assert_allclose(mid, mid_ref, rtol=FP32_RTOL, atol=FP32_ATOL)
    np.testing.assert_allclose(
        run_onnxruntime(out / "cloud.onnx", mid), out_ref, rtol=FP32_RTOL, atol=FP32_ATOL
    )
    with torch.no_grad():
        full = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        run_onnxruntime(out / "cloud.onnx", mid), full, rtol=FP32_RTOL, atol=FP32_ATOL
    )


def test_onnx_files_are_single_file_with_symbolic_batch(
    fp32_artifact: tuple[BlockNet, Path],
) -> None:
    _, out = fp32_artifact
    assert sorted(p.name for p in out.iterdir()) == ["cloud.onnx", "edge.onnx", MANIFEST]
    for name in ("edge.onnx", "cloud.onnx"):
        proto = onnx.load(str(out / name))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == 17
        assert all(t.data_location != TensorProto.EXTERNAL for t in proto.graph.initializer)
        for value in (proto.graph.input[0], proto.graph.output[0]):
            assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_manifest_describes_partitions(fp32_artifact: tuple[BlockNet, Path]) -> None:
    model, out = fp32_artifact
    manifest = verify_manifest(out)
    edge, cloud = split(model, 2)
    assert (
        manifest["split"] == 2 and manifest["target"] == "onnx" and manifest["precision"] == "fp32"
    )
    assert manifest["input_shape"] == list(SHAPE)
    assert manifest["edge_output_shape"] == [16, 8, 8]  # layer2 of a 1/8-width ResNet-18
    assert manifest["output_shape"] == [64]
    assert manifest["edge"]["params"] == count_params(edge)
    assert manifest["edge"]["weight_bytes"] == 4 * count_params(edge)
    assert manifest["edge"]["macs"] == count_macs(edge, SHAPE)
    assert manifest["cloud"]["macs"] == count_macs(cloud, (16, 8, 8))
    # cloud.onnx emits the re-id embedding: the classifier (64 x 10) is not in it
    classifier = cloud.get_submodule("head.classifier").weight.numel()
    assert manifest["cloud"]["params"] == count_params(cloud) - classifier == 164_928
    assert manifest["cloud"]["weight_bytes"] == 4 * manifest["cloud"]["params"]
    initializers = {i.name for i in onnx.load(str(out / "cloud.onnx")).graph.initializer}
    assert not any("classifier" in name for name in initializers)
    assert manifest["edge"]["bytes_sent"] == 16 * 8 * 8 * 4
    assert set(manifest["files"]) == {"edge.onnx", "cloud.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (out / name).stat().st_size
    assert "torch" in manifest["versions"] and "onnx" in manifest["versions"]


def test_export_keeps_training_mode_and_bn_stats(tmp_path: Path) -> None:
    model = tiny_resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_partitions(model, 1, tmp_path / "out", "onnx", "fp32", SHAPE)
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_fp16_export_halves_the_uplink_and_stays_within_tolerance(tmp_path: Path) -> None:
    model = tiny_resnet()
    manifest = export_partitions(model, 2, tmp_path / "fp16", "onnx", "fp16", SHAPE)
    assert manifest["edge_output_dtype"] == "float16"
    assert manifest["edge"]["bytes_sent"] == 16 * 8 * 8 * 2
    assert manifest["edge"]["weight_bytes"] == 2 * manifest["edge"]["params"]
    edge = onnx.load(str(tmp_path / "fp16" / "edge.onnx"))
    cloud = onnx.load(str(tmp_path / "fp16" / "cloud.onnx"))
    float_inits = [
        t
        for g in (edge.graph, cloud.graph)
        for t in g.initializer
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
    ]
    assert float_inits and all(t.data_type == TensorProto.FLOAT16 for t in float_inits)
    assert edge.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert edge.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert cloud.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert cloud.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT

    x = batch(3)
    mid_ref, out_ref = torch_parts(model, 2, x)
    mid = run_onnxruntime(tmp_path / "fp16" / "edge.onnx", x)
    assert mid.dtype == np.float16
    out = run_onnxruntime(tmp_path / "fp16" / "cloud.onnx", mid)
    for got, ref in ((mid, mid_ref), (out, out_ref)):
        err = np.abs(got.astype(np.float32) - ref)
        assert np.all(err <= FP16_ATOL * np.abs(ref).max() + FP16_RTOL * np.abs(ref))
    assert FP16_ATOL <= 1e-2 and FP16_RTOL <= 1e-2  # the documented tolerance, not looser


def test_parity_mismatch_raises_and_leaves_no_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import patrol_compress.exporters.onnx_float as onnx_exporter

    real = onnx_exporter.run_onnxruntime

    def off_by_a_bit(
        path: Path, x: np.ndarray, threads: int | None = None, noise: np.ndarray | None = None
    ) -> np.ndarray:
        return real(path, x, threads, noise) + np.float32(1e-2)

    monkeypatch.setattr(onnx_exporter, "run_onnxruntime", off_by_a_bit)
    out = tmp_path / "exports" / "deep" / "onnx"
    with pytest.raises(ExportError, match="differs from torch"):
        export_partitions(tiny_resnet(), 2, out, "onnx", "fp32", SHAPE)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # neither the work folder nor created parents remain


def test_existing_output_needs_force_and_force_replaces_only_export_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    model = tiny_resnet()
    with pytest.raises(OutputExistsError, match="--force"):
        export_partitions(model, 2, out, "onnx", "fp32", SHAPE)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    export_partitions(model, 2, out, "onnx", "fp32", SHAPE, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [
        "cloud.onnx",
        "edge.onnx",
        MANIFEST,
        "notes.txt",
    ]
    verify_manifest(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_tampered_artifact_fails_verification_naming_the_file(
    fp32_artifact: tuple[BlockNet, Path], tmp_path: Path
) -> None:
    out = tmp_path / "a"
    shutil.copytree(fp32_artifact[1], out)
    verify_manifest(out)
    data = bytearray((out / "cloud.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "cloud.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"cloud\.onnx.*sha256"):
        verify_manifest(out)
    (out / "cloud.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"cloud\.onnx.*missing"):
        verify_manifest(out)
    (out / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest"):
        read_manifest(out)


def test_pruned_network_exports_with_pruned_shapes(tmp_path: Path) -> None:
    model = tiny_resnet()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *SHAPE))
    for name, idxs in (("layer1.0.conv1", [0, 1, 2]), ("conv1", [0, 5])):
        layer = model.get_submodule(name)
        group = graph.get_pruning_group(layer, tp.prune_conv_out_channels, idxs=idxs)
        assert graph.check_pruning_group(group)
        group.prune()
    assert conv_shape(model, "conv1") == (6, 3, 3, 3)
    assert conv_shape(model, "layer1.0.conv1") == (5, 6, 3, 3)

    manifest = export_partitions(model, 2, tmp_path / "pruned", "onnx", "fp32", SHAPE)
    edge, _ = split(model, 2)
    torch_shapes = sorted(
        tuple(m.weight.shape) for m in edge.modules() if isinstance(m, torch.nn.Conv2d)
    )
    proto = onnx.load(str(tmp_path / "pruned" / "edge.onnx"))
    inits = {t.name: t for t in proto.graph.initializer}
    onnx_shapes = sorted(
        tuple(numpy_helper.to_array(inits[n.input[1]]).shape)
        for n in proto.graph.node
        if n.op_type == "Conv"
    )
    assert onnx_shapes == torch_shapes
    assert (5, 6, 3, 3) in onnx_shapes and (6, 3, 3, 3) in onnx_shapes
    assert manifest["edge"]["params"] == count_params(edge)


def test_non_resnet_blocknet_exports(tmp_path: Path) -> None:
    blocks = BlocksConfig(
        stem=["stem_conv", "stem_bn", "stem_act"], stages=[["s1"], ["s2"], ["s3"]]
    )
    model = wrap_module(tiny_mobilenet(10), blocks, 10, image_size=32)
    randomize_bn(model)
    manifest = export_partitions(model.eval(), 2, tmp_path / "mb", "onnx", "fp32", SHAPE)
    assert manifest["edge_output_shape"] == [16, 8, 8]


def test_invalid_requests_are_user_errors(tmp_path: Path) -> None:
    model = tiny_resnet()
    with pytest.raises(ExportError, match="precision"):
        export_partitions(model, 2, tmp_path / "x", "onnx", "int4", SHAPE)
    with pytest.raises(ExportError, match="int8 needs calibration and test images"):
        export_partitions(model, 2, tmp_path / "x", "onnx", "int8", SHAPE)
    with pytest.raises(ModelError, match="out of range"):
        export_partitions(model, 9, tmp_path / "x", "onnx", "fp32", SHAPE)
    with pytest.raises(RegistryError, match="did you mean 'onnx'"):
        export_partitions(model, 2, tmp_path / "x", "onnxx", "fp32", SHAPE)
    with pytest.raises(ExportError, match="does not accept inputs"):
        export_partitions(model, 2, tmp_path / "x", "onnx", "fp32", (1, 32, 32))
    with pytest.raises(ExportError, match="may not override"):
        export_partitions(
            model, 2, tmp_path / "x", "onnx", "fp32", SHAPE, extra_manifest={"files": 1}
        )
    assert list(tmp_path.iterdir()) == []


def test_fp16_converter_rejects_unknown_boundary_names() -> None:
    proto = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    with pytest.raises(ExportError, match="not graph inputs"):
        convert_to_fp16(proto, keep_fp32=["z"])
    converted = convert_to_fp16(proto, keep_fp32=["x"])
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_cli_export_writes_default_folder_and_respects_force(tmp_path: Path) -> None:
    from patrol_compress.cli.app import app
    from patrol_compress.models.saved import save_run_model

    run = tmp_path / "run"
    save_run_model(run, tiny_resnet(), tiny_model_info(split=2))
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), "--target", "onnx"])
    assert result.exit_code == 0, result.output
    out = run / "export" / "onnx-split2-fp32"
    manifest = verify_manifest(out)
    assert manifest["run"] == str(run) and manifest["weights_sha256"]
    again = runner.invoke(app, ["export", str(run), "--target", "onnx"])
    assert again.exit_code == 2 and "already exists" in again.output
    forced = runner.invoke(app, ["export", str(run), "--target", "onnx", "--split", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (run / "export" / "onnx-split1-fp32" / MANIFEST).is_file()
    bad = runner.invoke(app, ["export", str(run), "--target", "tflite"])
    assert bad.exit_code == 2 and "--target 'tflite': expected one of" in bad.output


def test_export_defaults_come_from_the_run_recipes_export_section(tmp_path: Path) -> None:
    from patrol_compress.exporters import export_run
    from patrol_compress.models.saved import save_run_model
    from patrol_compress.recipe import dump_recipe, parse_recipe

    from .helpers import tiny_recipe_dict

    run = tmp_path / "run"
    save_run_model(run, tiny_resnet(), tiny_model_info(split=2))
    data = tiny_recipe_dict(tmp_path)
    data["export"] = {"split": 1, "opset": 13}
    (run / "recipe.resolved.yaml").write_text(dump_recipe(parse_recipe(data)))
    manifest = export_run(run, target="onnx")
    assert manifest["split"] == 1
    proto = onnx.load(str(Path(manifest["out_dir"]) / "edge.onnx"))
    assert proto.opset_import[0].version == 13
    given = export_run(run, 2, "onnx", opset=14)  # arguments win over the recipe
    assert given["split"] == 2
    assert onnx.load(str(Path(given["out_dir"]) / "edge.onnx")).opset_import[0].version == 14
    data["export"] = {"split": 7}
    (run / "recipe.resolved.yaml").write_text(dump_recipe(parse_recipe(data)))
    with pytest.raises(ModelError, match="the recipe's export.split 7 is out of range"):
        export_run(run, target="onnx")


def test_fp32_parity_scales_its_absolute_tolerance_with_the_output() -> None:
    """Reordered sums err by an ulp of the layer's scale, not of each element (issue 14)."""
    ref = np.zeros((1, 4), dtype=np.float32)
    ref[0, 0] = 8.7  # a trained edge's range; element 1 is a near-zero difference of large terms
    got = ref.copy()
    got[0, 1] = 3.05e-5  # what onnxruntime gave on the quickstart target's split-2 edge
    assert check_parity("edge", got, ref, "fp32") == pytest.approx(3.05e-5)
    got[0, 1] = 1e-2  # a wrong weight or fold errs by far more
    with pytest.raises(ExportError, match="fp32 output differs"):
        check_parity("edge", got, ref, "fp32")
