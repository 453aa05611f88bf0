"""The teachers: one LoRA per (task, seed), trained, checkpointed and resumed (`run`); the zoo of them
and its manifest (`zoo`; `command` is `python -m llgbm.zoo`); several teachers in one forward (`packing`)."""
