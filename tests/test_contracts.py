"""The file contracts (patrol_compress.contracts): names defined once, records that name the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from patrol_compress import contracts
from patrol_compress.contracts import AttackResult, Manifest, check_record, read_manifest
from patrol_compress.errors import ArtifactError

ROOT = Path(__file__).resolve().parent.parent
NAMES = [v for k, v in vars(contracts).items() if k.isupper() and isinstance(v, str) and "." in v]


def _manifest() -> dict[str, Any]:
    return {
        "split": 2,
        "target": "onnx",
        "precision": "fp32",
        "files": {"edge.onnx": {"sha256": "0" * 64, "bytes": 10}},
        "input_shape": [3, 32, 32],
        "edge": {"params": 100, "weight_bytes": 400, "macs": 1000, "bytes_sent": 4096},
        "run": "somewhere",  # keys a writer adds stay
    }


def test_file_names_are_written_only_in_contracts() -> None:
    pattern = re.compile("([\"'])(" + "|".join(re.escape(n) for n in NAMES) + ")\\1")
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for folder in ("patrol_compress", "exporters")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name != "contracts.py"
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line) and "help=" not in line
    ]
    assert found == []


def test_a_manifest_record_keeps_unknown_keys() -> None:
    record = check_record(Manifest, _manifest(), "m.json")
    assert record.edge.bytes_sent == 4096 and record.model_extra == {"run": "somewhere"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda m: m.pop("target"), "target: expected a string, found nothing"),
        (lambda m: m.update(files={}), "files: expected a non-empty object"),
        (lambda m: m["edge"].update(bytes_sent="4096"), "edge.bytes_sent: expected an integer"),
        (lambda m: m.update(split=True), "split: expected the split point"),
        (lambda m: m.update(input_shape="3x32x32"), "input_shape: expected a list"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_key(tmp_path: Path, change: Any, words: str) -> None:
    manifest = _manifest()
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        read_manifest(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'manifest.json'}: ")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_first_attack_json_format_still_reads() -> None:
    old = {"split": 2, "attacks": {"blackbox": {"psnr": 20, "ssim": 0.5}}, "mean_image": None}
    record = check_record(AttackResult, old, "attack.json")
    assert record.attacks["blackbox"].psnr == 20.0
    assert record.label is None and record.grid is None and record.versions == {}


def test_counts_keep_integers_and_refuse_non_finite_numbers() -> None:
    data = {"split": 1, "attacks": {"a": {"psnr": 1, "ssim": 0}}, "edge": {"params": 7, "x": "y"}}
    record = check_record(AttackResult, data, "attack.json")
    assert record.edge is not None and record.edge.model_dump(exclude_unset=True) == {
        "params": 7,
        "x": "y",
    }
    data["edge"] = {"macs": float("inf")}
    with pytest.raises(ArtifactError, match=r"edge\.macs: expected a finite number, found inf"):
        check_record(AttackResult, data, "attack.json")
