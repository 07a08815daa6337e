"""Per-epoch checkpoints with no pickle: tensors in safetensors, the rest in JSON.

A checkpoint is ``epoch-NNNN.safetensors`` (model, optimizer and RNG tensors
under prefixed keys) plus ``last.json``, which names that file and its sha256
and holds the non-tensor optimizer state. Both are written atomically and
``last.json`` only after its tensors are on disk, so a run killed at any moment
resumes from the last complete epoch; older epoch files are removed afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from patrol_compress.contracts import CHECKPOINT_FILE, CHECKPOINTS_DIR
from patrol_compress.errors import ArtifactError, first_line
from patrol_compress.io import atomic_path, contained_file, read_json, sha256_file, write_json


def _opt_split(
    opt: torch.optim.Optimizer, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        plain_state[str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                plain_state[str(pid)][k] = v
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def _opt_join(
    opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], plain: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for pid, st in plain["state"].items():
        state[int(pid)] = dict(st)
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(
    folder: Path,
    epoch: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Save the state after ``epoch`` (1-based count of finished epochs)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"module:{name}:{k}"] = v.detach().contiguous().cpu()
    opt_plain: dict[str, Any] = {}
    for name, opt in optimizers.items():
        t, plain = _opt_split(opt, f"opt:{name}")
        tensors.update(t)
        opt_plain[name] = plain
    tensors["rng:torch"] = torch.get_rng_state()
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra:{k}"] = v.detach().contiguous().cpu()
    path = folder / f"epoch-{epoch:04d}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    write_json(
        folder / CHECKPOINT_FILE,
        {
            "epoch": epoch,
            "file": path.name,
            "sha256": sha256_file(path),
            "optimizers": opt_plain,
            "info": info or {},
        },
    )
    for old in folder.glob("epoch-*.safetensors"):
        if old.name != path.name:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(
    folder: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """Restore the last complete epoch; returns (epoch, extra tensors, info) or None."""
    meta_path = folder / CHECKPOINT_FILE
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not all(k in meta for k in ("epoch", "file", "sha256")):
        raise ArtifactError(f"{meta_path}: not a checkpoint description (epoch, file, sha256)")
    epoch = meta["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ArtifactError(
            f"{meta_path}: 'epoch' must be the number of finished epochs (>= 1), found "
            f"{str(epoch)[:40]!r}; the checkpoint is corrupt"
        )
    path = contained_file(folder, meta["file"], meta_path)
    if meta["file"] != f"epoch-{epoch:04d}.safetensors":
        raise ArtifactError(
            f"{meta_path}: names {str(meta['file'])[:60]!r} for epoch {epoch}; the checkpoint "
            "is corrupt"
        )
    if not path.is_file() or sha256_file(path) != meta["sha256"]:
        raise ArtifactError(f"{path}: checkpoint missing or does not match {meta_path}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for a corrupt file
        raise ArtifactError(f"{path}: cannot read the checkpoint ({type(exc).__name__})") from None
    for name, m in modules.items():
        prefix = f"module:{name}:"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            m.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ArtifactError(
                f"{path}: checkpoint does not fit the model '{name}' ({first_line(exc)})"
            ) from None
    try:
        for name, opt in optimizers.items():
            _opt_join(opt, f"opt:{name}", tensors, meta["optimizers"][name])
        torch.set_rng_state(tensors["rng:torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # an edited last.json
        raise ArtifactError(
            f"{meta_path}: the optimizer or generator state does not fit this stage "
            f"({type(exc).__name__}); the checkpoint is corrupt"
        ) from None
    extra = {k[len("extra:") :]: v for k, v in tensors.items() if k.startswith("extra:")}
    info = meta.get("info", {})
    return epoch, extra, info if isinstance(info, dict) else {}


_STAGE_ORDER = ("target", "patrol", "recover")


def drop_checkpoints(run: Path, keep: str) -> list[Path]:
    """After a job succeeded: remove the stages' checkpoints ``keep`` does not keep.

    Every finished stage keeps its latest epoch's checkpoint (``all``, the
    default) although a finished run needs none of them: its stages are done
    and its models saved. ``last`` keeps only the last training stage's
    (target, then patrol, then recover), ``none`` none. Only our files go (a
    stage's ``last.json`` and ``epoch-*.safetensors``); folders left empty go
    too. Returns the stage folders emptied.
    """
    root = run / CHECKPOINTS_DIR
    if keep == "all" or not root.is_dir():
        return []
    stages = sorted(
        (p for p in root.iterdir() if p.is_dir() and (p / CHECKPOINT_FILE).is_file()),
        key=lambda p: (
            _STAGE_ORDER.index(p.name) if p.name in _STAGE_ORDER else len(_STAGE_ORDER),
            p.name,
        ),
    )
    dropped = stages[:-1] if keep == "last" else stages
    for folder in dropped:
        (folder / CHECKPOINT_FILE).unlink()  # first: a half-removed stage is no checkpoint
        for tensors in folder.glob("epoch-*.safetensors"):
            tensors.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
    return dropped
