"""LLGBM Lab: prompt-to-LoRA generation trained on weights (DnD) and on behaviour (delta
activations), with the models, task suite, teacher zoo and report machinery it stands on.

Pipeline, one module per stage: tasks → models → zoo → probes → evaluation → report/run."""
__version__ = "0.1.0"
