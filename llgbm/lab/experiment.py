"""The generator lab shared by notebooks 00 and 03–05 and by llgbm.ddp: one object holding the model,
the zoo, its deltas, the phase-2 dataset and the delta supervision, with cached training and
evaluation, and the held-out baselines every comparison uses (base model, mean of training LoRAs,
nearest training task's LoRA, the task's own teacher), scored once and cached."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llgbm.core import cache, models, tasks
from llgbm.core.lora import average_adapters
from llgbm.core.stats import cosine
from llgbm.core.utils import check_known, hash_bytes, llgbm_home
from llgbm.delta import activations, probes
from llgbm.eval import compare
from llgbm.eval.scoring import evaluate_adapters
from llgbm.generator import losses, sample
from llgbm.generator import supervision as outputs
from llgbm.generator import train as training
from llgbm.generator.dataset import DeltaAugmentedDataset, GeneratorData
from llgbm.generator.network import GeneratorConfig
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
from llgbm.teachers import zoo

REFERENCES = {"base": "base", "mean_lora": "mean of training LoRAs", "nearest_lora": "nearest task's LoRA",
              "teacher": "own teacher"}
_LEGACY_NOTED = False


@dataclass
class GeneratorLab:
    profile: str
    model_name: str
    model: object
    tokenizer: object
    zoo_cfg: zoo.ZooConfig
    root: Path
    manifest: list[dict]
    lora_tokenizer: LoRATokenizer2D
    encoder: object
    deltas: np.ndarray | None          # teacher deltas, aligned with `manifest` (None: weight-only work)
    dataset: DeltaAugmentedDataset     # the training split
    data: GeneratorData
    supervision: losses.DeltaSupervision | None
    gcfg: GeneratorConfig
    tcfg: training.TrainingConfig
    _cache: dict = field(default_factory=dict, repr=False)   # labeled datasets, output supervision

    @classmethod
    def load(cls, profile: str, model_name: str | None = None, with_deltas: bool = True, model=None, tokenizer=None,
             zoo_root: Path | str | None = None, cache_root: Path | str | None = None,
             **training_overrides) -> "GeneratorLab":
        """The lab over a profile's finished zoo. `with_deltas=False` skips the deltas and the delta
        supervision (phase 0 trains on weights alone); `model`/`tokenizer` reuse a loaded model."""
        global _LEGACY_NOTED
        model_name = model_name or models.MODEL_FOR_PROFILE[profile]
        zcfg, root, manifest = zoo.load_manifest(profile, model_name, root=zoo_root)
        if model is None:
            model, tokenizer = models.load_model(model_name)
        lora_tok = LoRATokenizer2D(LoraLayout.from_config(model.config, rank=zcfg.rank, targets=zcfg.targets))
        generic = probes.create_generic_probes()
        deltas = sup = None
        if with_deltas:
            deltas, _ = activations.zoo_deltas(model, tokenizer, root, manifest, generic, models.model_fingerprint(model_name),
                                         cache_root=cache_root, progress=False)
            sup = losses.DeltaSupervision(model, tokenizer, generic, zcfg.lora_config(), lora_tok)
        gcfg = GeneratorConfig.preset(profile)
        encoder = models.load_encoder()
        ds = DeltaAugmentedDataset(root, manifest, deltas, lora_tok, split="train", prompts_per_item=gcfg.n_prompts)
        legacy = training.legacy_run_dirs()
        if legacy and not _LEGACY_NOTED:
            print(f"note: {len(legacy)} generator run folder(s) from an older version hold torch.save checkpoints "
                  f"(e.g. {legacy[0].name}); they are ignored, never unpickled, and their runs are trained again")
            _LEGACY_NOTED = True
        return cls(profile, model_name, model, tokenizer, zcfg, root, manifest, lora_tok, encoder, deltas, ds,
                   GeneratorData(ds, encoder, gcfg), sup, gcfg, training.TrainingConfig.preset(profile, **training_overrides))

    @property
    def heldout(self) -> list[str]:
        return [t for t in self.zoo_cfg.task_names() if tasks.get_task(t).heldout]

    @property
    def training_tasks(self) -> list[str]:
        return [t for t in self.zoo_cfg.task_names() if not tasks.get_task(t).heldout]

    def teacher_deltas(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """{task: (checkpoints, hidden)} teacher deltas of the held-out tasks (or of `names`)."""
        if self.deltas is None:
            raise ValueError("this lab was loaded with with_deltas=False: it has no teacher deltas")
        return {t: self.deltas[[i for i, r in enumerate(self.manifest) if r["task"] == t]] for t in (names or self.heldout)}

    def config(self, objective: str, **overrides) -> training.TrainingConfig:
        """The profile's training config for `objective`; weight-only trains `weight_steps` (to its
        plateau) and keeps `weight_keep_steps` unless `steps` / `keep_steps` are given."""
        if objective == "weight":
            overrides.setdefault("steps", self.tcfg.weight_steps)
            overrides.setdefault("keep_steps", self.tcfg.weight_keep_steps)
        return replace(self.tcfg.with_objective(objective), **overrides)

    def data_for(self, labeled: bool = False, shots: int | None = None, tasks: list[str] | None = None) -> GeneratorData:
        """The training batches: DnD's (the default), conditioned on labeled examples, or over a subset
        of the training tasks (training-task scaling). Built once per variant."""
        key = (labeled, shots, tuple(tasks) if tasks is not None else None)
        if key == (False, None, None):
            return self.data
        if key not in self._cache:
            ds = self.dataset
            if tasks is not None:
                check_known(tasks, self.training_tasks, "training task(s) of this zoo")
                keep = [i for i, r in enumerate(self.manifest) if r["task"] in tasks]
                ds = DeltaAugmentedDataset(self.root, [self.manifest[i] for i in keep],
                                           None if self.deltas is None else self.deltas[keep], self.lora_tokenizer,
                                           split="train", prompts_per_item=self.gcfg.n_prompts)
            self._cache[key] = GeneratorData(ds, self.encoder, self.gcfg, labeled=labeled, shots=shots)
        return self._cache[key]

    @property
    def outputs(self) -> outputs.OutputSupervision:
        """kd / sft supervision over the training tasks' example pools (teacher outputs cached on disk)."""
        if "outputs" not in self._cache:
            self._cache["outputs"] = outputs.OutputSupervision(
                self.model, self.tokenizer, self.training_tasks, self.root, self.zoo_cfg.lora_config(), self.lora_tokenizer,
                models.model_fingerprint(self.model_name), self.tcfg.sft_examples, self.tcfg.sft_per_adapter,
                self.tcfg.kd_top_k)
        return self._cache["outputs"]

    def train(self, objective: str, seed: int, progress: bool = True, labeled: bool = False, shots: int | None = None,
              tasks: list[str] | None = None, **overrides) -> training.TrainResult:
        cfg = self.config(objective, **overrides)
        return training.train(self.data_for(labeled, shots, tasks), self.gcfg, cfg, seed, self.supervision,
                              progress=progress, outputs=self.outputs if cfg.uses_outputs else None,
                              meta=dict(base_model=self.model_name, model_fingerprint=models.model_fingerprint(self.model_name)))

    def check_generator(self, run_dir: Path | str) -> None:
        """Refuse a generator run trained for another base model than this lab's."""
        path = Path(run_dir) / "config.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        if saved.get("model_fingerprint") not in (None, models.model_fingerprint(self.model_name)):
            raise ValueError(f"the generator in {run_dir} was trained for another base model "
                             f"({saved.get('base_model')}), not {self.model_name!r}: "
                             f"load the lab for that model, or train a generator for this one")

    def evaluate(self, result: training.TrainResult, progress: bool = True, condition=None, loglik_only: bool = False,
                 n_items: int | None = None, split: str = "test", prefix=None) -> dict[str, dict]:
        """Held-out scores of a generator run (see `sample.evaluate`) on the profile's test items, or
        on its dev items (`split="dev"`); `n_items` instead scores the first n items, unsplit.
        `prefix(task)` goes before every prompt (the adapter plus a few-shot prompt)."""
        return self.evaluate_many([result], progress, condition, loglik_only, n_items, split, prefix)[0]

    def evaluate_many(self, results: list[training.TrainResult], progress: bool = True, condition=None,
                      loglik_only: bool = False, n_items: int | None = None, split: str = "test",
                      prefix=None) -> list[dict[str, dict]]:
        """`evaluate` for several runs or checkpoints at once, in shared forwards (`sample.evaluate_many`).
        Test and dev items are scored together, once, and cached: either split reads the same cache."""
        with_delta = self.supervision is not None
        n, n_dev = (n_items, 0) if n_items else (self.tcfg.eval_items, self.tcfg.dev_items)
        scores = sample.evaluate_many(results, self.encoder, self.model, self.tokenizer, self.lora_tokenizer,
                                      self.zoo_cfg.lora_config(), self.heldout, n,
                                      self.supervision if with_delta else None,
                                      self.teacher_deltas() if with_delta else None, progress, condition, loglik_only, n_dev,
                                      prefix)
        return scores if n_items else [compare.split_items(s, split, self.tcfg.eval_items) for s in scores]

    def fit_delta_cos(self, result: training.TrainResult) -> dict[str, float]:
        """Per training task: mean cos(Δ of the adapter generated from its prompts, its teachers' Δ)."""
        out = {}
        for t in self.data.tasks:
            tokens = sample.generate_tokens(result.generator, self.encoder, tasks.get_task(t).prompts("train"))
            with torch.no_grad():
                d = self.supervision(tokens[None])[0].numpy()
            out[t] = float(np.mean(cosine(d, self.teacher_deltas([t])[t])))
        return out

    def generation_seconds(self, result: training.TrainResult, names: list[str], out_dir: Path) -> list[float]:
        """Seconds to write a generated peft adapter folder for each task, end to end."""
        return [sample.generate_adapter(result.generator, self.encoder, self.lora_tokenizer, self.zoo_cfg.lora_config(),
                                          tasks.get_task(t).prompts("train"), Path(out_dir) / t)[1] for t in names]

    # ------------------------------------------------------------------ held-out baselines

    def final_checkpoints(self) -> dict[str, str]:
        """{task: path of its last checkpoint} (the latest step wins across seeds)."""
        return {r["task"]: r["path"] for r in sorted(self.manifest, key=lambda r: r["step"])}

    def nearest_tasks(self, n_prompts: int = 64) -> dict[str, str]:
        """{held-out task: the training task whose mean MiniLM prompt embedding is closest (cosine)}."""
        emb = {t: self.encoder.encode(tasks.get_task(t).prompts("train")[:n_prompts]).mean(0)
               for t in self.heldout + self.training_tasks}
        return {h: max(self.training_tasks, key=lambda t: float(cosine(emb[h], emb[t])[0])) for h in self.heldout}

    def reference_scores(self, progress: bool = True, split: str = "test") -> dict[str, dict[str, dict]]:
        """Per-item scores on the held-out items `evaluate` uses (its test or dev `split`), for every
        REFERENCES method: {method: {task: {correct, loglik}}}, plus {"nearest": {task: training task}}.
        Both splits are scored together, once, and cached."""
        n, n_dev = self.tcfg.eval_items, self.tcfg.dev_items
        key = f"reference-v3-{self.root.name}-{'_'.join(self.heldout)}-{n}-{n_dev}"
        path = llgbm_home() / "generators" / f"reference-{hash_bytes(key.encode())[:16]}.json"
        saved = cache.cached(path, lambda: self._reference_scores(progress, n, n_dev))
        return dict({m: compare.split_items(cache.arrays(rows), split, self.tcfg.eval_items)
                     for m, rows in saved.items() if m != "nearest"}, nearest=saved["nearest"])

    def _reference_scores(self, progress: bool, n: int, n_dev: int) -> dict:
        final, nearest = self.final_checkpoints(), self.nearest_tasks()
        mean_lora = average_adapters([self.root / final[t] for t in self.training_tasks])
        out = {m: {} for m in REFERENCES}
        for t in tqdm(self.heldout, desc="references", disable=not progress, leave=False):
            task = tasks.get_task(t)
            adapters = {"base": None, "mean_lora": mean_lora, "nearest_lora": self.root / final[nearest[t]],
                        "teacher": self.root / final[t]}
            scores = evaluate_adapters(self.model, self.tokenizer, task, list(adapters.values()), n=n, n_dev=n_dev,
                                       lora_config=self.zoo_cfg.lora_config())   # the four in shared forwards
            for m, s in zip(adapters, scores):
                out[m][t] = dict(correct=s.correct.astype(float), loglik=s.loglik)
        return dict(out, nearest=nearest)
