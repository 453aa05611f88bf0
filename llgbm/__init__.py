"""LLGBM Lab: prompt-to-LoRA generation trained on weights (DnD) and on behaviour (delta
activations), with the models, task suite, teacher zoo and report machinery it stands on.

The pipeline, one package per stage; each imports only the stages below it:

    core      models, tasks, LoRA, statistics, utilities, timers (the floor)
    eval      scoring an adapter on a task, tables of methods, LM perplexity
    teachers  one LoRA per task (a run), the zoo of them, packed multi-teacher training
    delta     probe texts and delta activations Δ = v(adapted) − v(base), cached
    generator the prompt-to-LoRA network, its tokenizer, data, losses, supervision, train, sample
    lab       experiments, baselines and one ledger per notebook (metrics, claims, verdicts)
    notebook  running the notebooks, their report files, figures and parameters
    bench     hot paths measured against the machine's peak (the top floor: nothing imports it)

`eval` sits right above `core` although it comes late in the story: teachers and generators are
scored with it as they train. The modules at this level (`run`, `zoo`, `generate`, `ddp`,
`training`, `dataset`, `functional`, `probes`) keep the commands and seed 002's import paths."""
import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft and transformers) logs "Failed to load CPU gemm_4bit_forward from
# kernels-community: No module named 'kernels'" in every process on a CPU with AVX512-BF16: its
# optional downloaded kernel is not installed, and its built-in CPU kernel serves instead (NF4 works,
# tested). Nothing for a user to do, so that one message is filtered here, before anything imports it.
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda record: "kernels-community" not in record.getMessage())
