"""Experiments on top of the pipeline: `experiment` (GeneratorLab: a profile's zoo, data and generator
runs, the reference adapters), `baselines` (few-shot prompting, one multi-task LoRA), `suiteplan`,
`suitelab` and `suiterun` (phase 6 on the large task suite), `generate` (a user's task end to end), `ddp` (generators across processes), and
`ledgers`, one module per notebook with its metrics, claims and verdict sentence."""
