"""The generator: prompts -> LoRA weights. `network` is the hyper-convolutional model, `tokenizer` lays
LoRA weights out as its 2-D tokens, `dataset` pairs tasks' prompts with teachers' tokens and deltas,
`losses` the weight and delta terms, `supervision` the output (kd/sft) terms, `train` trains and
checkpoints a run, `sample` writes and scores generated adapters."""
