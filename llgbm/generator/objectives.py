"""The generator's objectives by name, with no imports, so that a notebook's parameter check can name
them without loading the generator.

`OBJECTIVES`: the zoo generator's loss weights (λ_w, λ_d, λ_kd, λ_sft). The combinations weigh their
terms 1:1: every term starts near its own scale of "no better than the mean teacher" (weight and
delta are relative errors, ~1; kd and sft are nats per answer token), and no λ was tuned on held-out
scores. `SUITE_OBJECTIVES`: the large suite's generators (notebook 06), each an output objective and
the teacher whose outputs it matches: SFT on the gold answers, or context distillation ("cd": KD from
the base model reading k demonstrations)."""
OBJECTIVES = {"weight": (1.0, 0.0, 0.0, 0.0), "multitask": (1.0, 1.0, 0.0, 0.0), "delta": (0.0, 1.0, 0.0, 0.0),
              "kd": (0.0, 0.0, 1.0, 0.0), "sft": (0.0, 0.0, 0.0, 1.0), "delta+sft": (0.0, 1.0, 0.0, 1.0),
              "weight+sft": (1.0, 0.0, 0.0, 1.0)}
SUITE_OBJECTIVES = {"sft": ("sft", "none"), "cd": ("kd", "context")}    # name: (training objective, TaskData teacher)
ALL_OBJECTIVES = tuple(dict.fromkeys((*SUITE_OBJECTIVES, *OBJECTIVES)))
