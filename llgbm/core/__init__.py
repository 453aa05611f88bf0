"""The floor every stage stands on: models (`models`), the task suite (`tasks`), LoRA and adapter
files (`lora`), `FunctionalLoRA` (`functional`), statistics (`stats`), atomic files, caches,
checkpoints and presets (`utils`), timers and FLOP counts (`timing`), torch.compile (`compiling`)."""
