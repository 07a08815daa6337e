"""Networks as ordered named blocks: ResNets, the re-id head, custom CNNs, splits."""

from patrol_compress.models.blocknet import BlockNet
from patrol_compress.models.factory import build_model, wrap_module
from patrol_compress.models.head import ReidHead
from patrol_compress.models.resnet import load_torchvision_backbone, resnet_backbone
from patrol_compress.models.split import check_split, split

__all__ = [
    "BlockNet",
    "ReidHead",
    "build_model",
    "check_split",
    "load_torchvision_backbone",
    "resnet_backbone",
    "split",
    "wrap_module",
]
