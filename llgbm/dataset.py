"""Seed 002's `llgbm.dataset` names, kept where it puts them (the code is `llgbm.generator.dataset`)."""
from llgbm.generator.dataset import DeltaAugmentedDataset, Text2Qwen25LoRA_DeltaDataset, create_dataloader  # noqa: F401
