"""The quantized uplink: b-bit codes with learned ranges, their packing and their bound."""

from patrol_compress.uplink.entropy import (
    bound_bits,
    capacity_bits,
    empirical_entropy_bits,
    uplink_report,
)
from patrol_compress.uplink.insert import (
    UPLINK_CHILD,
    calibrate_uplink,
    insert_uplink,
    measure_uplink,
    uplink_record,
    uplink_split,
)
from patrol_compress.uplink.pack import BITS, pack, packed_bytes, unpack
from patrol_compress.uplink.quant import UplinkDecode, UplinkPruner, UplinkQuant, find_uplink

__all__ = [
    "UPLINK_CHILD",
    "calibrate_uplink",
    "insert_uplink",
    "measure_uplink",
    "uplink_record",
    "uplink_split",
    "BITS",
    "UplinkDecode",
    "UplinkPruner",
    "UplinkQuant",
    "bound_bits",
    "capacity_bits",
    "empirical_entropy_bits",
    "find_uplink",
    "pack",
    "packed_bytes",
    "unpack",
    "uplink_report",
]
