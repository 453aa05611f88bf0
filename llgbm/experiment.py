"""The generator lab shared by notebooks 04–05: one object holding the model, the zoo, its deltas,
the training data and the delta supervision, with cached training, evaluation and reference scores,
plus the statistics every comparison uses."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import delta, evaluation, models, probes, tasks, training, zoo
from .generator import GeneratorConfig
from .tokenizer import LoraLayout, LoRATokenizer2D
from .utils import atomic_write_json, hash_bytes, llgbm_home


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
    deltas: np.ndarray                 # teacher deltas, aligned with `manifest`
    data: training.GeneratorData
    supervision: training.DeltaSupervision
    gcfg: GeneratorConfig
    tcfg: training.TrainingConfig

    @classmethod
    def load(cls, profile: str, model_name: str | None = None, **training_overrides) -> "GeneratorLab":
        model_name = model_name or models.MODEL_FOR_PROFILE[profile]
        zcfg = zoo.ZooConfig.preset(profile)
        root = zoo.zoo_dir(profile, model_name, zcfg)
        manifest = zoo.write_manifest(root) if root.exists() else []
        if not manifest:
            raise FileNotFoundError(f"no teacher zoo at {root}: run notebooks/00_baseline.ipynb with profile={profile!r} first")
        model, tok = models.load_model(model_name)
        layout = LoraLayout.from_config(model.config, rank=zcfg.rank, targets=zcfg.targets)
        lora_tok = LoRATokenizer2D(layout)
        generic = probes.create_generic_probes()
        deltas, _ = delta.zoo_deltas(model, tok, root, manifest, generic, models.model_fingerprint(model_name), progress=False)
        gcfg = GeneratorConfig.preset(profile)
        encoder = models.load_encoder()
        data = training.GeneratorData(encoder, root, manifest, lora_tok, gcfg, deltas)
        sup = training.DeltaSupervision(model, tok, generic, zcfg.lora_config(), lora_tok)
        return cls(profile, model_name, model, tok, zcfg, root, manifest, lora_tok, encoder, deltas, data, sup, gcfg,
                   training.TrainingConfig.preset(profile, **training_overrides))

    @property
    def heldout(self) -> list[str]:
        return [t for t in self.zoo_cfg.task_names() if tasks.get_task(t).heldout]

    def teacher_deltas(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """{task: (checkpoints, hidden)} teacher deltas of the held-out tasks (or of `names`)."""
        return {t: self.deltas[[i for i, r in enumerate(self.manifest) if r["task"] == t]] for t in (names or self.heldout)}

    def config(self, objective: str, **overrides) -> training.TrainingConfig:
        return replace(self.tcfg.with_objective(objective), **overrides)

    def train(self, objective: str, seed: int, progress: bool = True, **overrides) -> training.TrainResult:
        return training.train(self.data, self.gcfg, self.config(objective, **overrides), seed, self.supervision,
                              progress=progress)

    def evaluate(self, result: training.TrainResult, progress: bool = True) -> dict[str, dict]:
        return training.evaluate(result, self.encoder, self.model, self.tokenizer, self.lora_tokenizer,
                                 self.zoo_cfg.lora_config(), self.heldout, self.tcfg.eval_items, self.supervision,
                                 self.teacher_deltas(), progress)

    def reference_scores(self) -> dict[str, dict[str, dict]]:
        """Per-item scores of the base model and of each held-out task's own (final) teacher, on the
        same items as `evaluate`; cached next to the generator runs."""
        key = f"reference-{self.root.name}-{'_'.join(self.heldout)}-{self.tcfg.eval_items}"
        path = llgbm_home() / "generators" / f"reference-{hash_bytes(key.encode())[:16]}.json"
        if path.exists():
            return {m: {t: {k: np.asarray(v) for k, v in d.items()} for t, d in rows.items()}
                    for m, rows in json.loads(path.read_text()).items()}
        final = {}
        for r in sorted(self.manifest, key=lambda r: r["step"]):
            final[r["task"]] = r["path"]
        out = {"base": {}, "teacher": {}}
        for t in self.heldout:
            task = tasks.get_task(t)
            for method, adapter in (("base", None), ("teacher", self.root / final[t])):
                s = evaluation.evaluate_adapter(self.model, self.tokenizer, task, adapter, n=self.tcfg.eval_items)
                out[method][t] = dict(correct=s.correct.astype(float), loglik=s.loglik)
        atomic_write_json(path, {m: {t: {k: v.tolist() for k, v in d.items()} for t, d in rows.items()}
                                 for m, rows in out.items()})
        return out


def pooled(scores: dict[str, dict], what: str, names: list[str]) -> np.ndarray:
    """Per-item values of one metric, concatenated over tasks in `names` order."""
    return np.concatenate([np.asarray(scores[t][what], dtype=float) for t in names])


def task_delta_cos(scores: dict[str, dict], names: list[str]) -> np.ndarray:
    """Per task: the mean cosine of the generated Δ with the task's teacher checkpoints' Δ."""
    return np.array([float(np.mean(scores[t]["delta_cos"])) for t in names])


def paired_permutation_test(a, b, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided p-value of mean(a − b) = 0 by sign flips of the paired differences (exact when
    2^n ≤ n_perm). The pairs must be independent units (here: held-out tasks)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    if n == 0:
        raise ValueError("no pairs to test")
    observed = abs(d.mean())
    if 2 ** n <= n_perm:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).choice([-1, 1], size=(n_perm, n))
    null = np.abs((signs * d).mean(1))
    return float((null >= observed - 1e-12).mean())


def comparison_verdict(effects: dict[str, tuple[float, float]]) -> str:
    """Verdict on "A beats B" from a 95% interval of A − B per metric (each oriented so that higher is
    better): "supported" when some interval lies above 0 and none below, "refuted" when some lies below
    and none above, "mixed" (naming which) when they disagree, "inconclusive" when all contain 0."""
    if not effects:
        raise ValueError("no metrics to compare: pass {metric name: (low, high)}")
    better = [k for k, (lo, hi) in effects.items() if lo > 0]
    worse = [k for k, (lo, hi) in effects.items() if hi < 0]
    if better and worse:
        return f"mixed: better on {', '.join(better)}; worse on {', '.join(worse)}"
    if better:
        return "supported"
    if worse:
        return "refuted"
    return "inconclusive (every interval includes 0)"
