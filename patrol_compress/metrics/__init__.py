"""Metrics: re-id ranking (CMC, mAP, mINP), top-1 accuracy, model size."""
