"""Notebook 06 on the large suite (issue 27): can an adapter generated from a task's prompts beat what a
user would do instead (four examples in the prompt, one multi-task LoRA) on tasks it never saw, near
(new tasks of seen types) and far (types no training task has)?

`SuiteLab` holds the base model, MiniLM, the suite plan (`suiteplan.SuitePlan`: training subsets,
held-out tasks, items) and the compute plan (`SuiteConfig`), and runs every method on the same
held-out items, each cached:
- references: the base model and each held-out task's own teacher, trained to its dev-loss plateau
  (`teachers.plateau`; the gap's denominator), scored in shared forwards;
- k-shot prompting (the task's fixed demonstrations before every prompt);
- one multi-task LoRA per seed, on the same training tasks and examples, for as many LM steps and
  examples as a generator run (`multitask`);
- generators trained without LoRA teachers (`generator.dataset.TaskData`), so on any number of
  training tasks: SFT (Text-to-LoRA's objective) and context distillation ("cd": kd whose teacher is
  the base model reading k demonstrations), starting from a fresh LoRA's init;
- the generated adapter with the k-shot prompt, and the controls (conditioned on another held-out
  task's prompts, or on random text).
Scores of generator runs live in their run folders; the rest as JSON under LLGBM_HOME/suite."""
from __future__ import annotations

import json
import string
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from tqdm.auto import tqdm

from llgbm.core import cache, models, tasks
from llgbm.core.utils import check_known, check_profile, hash_bytes, llgbm_home, preset_config
from llgbm.eval import compare
from llgbm.eval.scoring import evaluate_adapters, evaluate_task
from llgbm.generator import sample
from llgbm.generator import train as training
from llgbm.generator.dataset import TaskData, lora_init_tokens
from llgbm.generator.network import GeneratorConfig
from llgbm.generator.objectives import SUITE_OBJECTIVES as OBJECTIVES
from llgbm.generator.supervision import OutputSupervision
from llgbm.generator.tokenizer import LoraLayout, LoRATokenizer2D
from llgbm.lab.baselines import MULTITASK_LR, TaskMixture, icl_prefix
from llgbm.lab.suiteplan import SuitePlan
from llgbm.teachers import plateau, run as teacher_run

CONTROLS = ("own", "other", "random")


@dataclass(frozen=True)
class SuiteConfig:
    """Notebook 06's compute plan: what each condition trains and scores (the plan's cost is measured
    and shown in the notebook's protocol cell)."""
    objectives: tuple[str, ...] = ("sft", "cd")
    steps: int = 40                        # generator steps; the multi-task LoRA takes as many
    batch_size: int = 4                    # tasks (generated adapters) per generator step
    per_adapter: int = 4                   # training examples per adapter and step ...
    pool: int = 16                         # ... drawn from each training task's first `pool` examples
    shots: int = 4                         # k: demonstrations in the prompt, and in cd's teacher prompt
    top_k: int = 64                        # cd: teacher log-probs kept per answer position
    prompt_pool: int = 64                  # a training task's condition draws from its first prompt_pool prompts
    seeds: tuple[int, ...] = (0, 1, 2)     # headline rows: every seed at the smallest and largest scaling point
    curve_seeds: tuple[int, ...] = (0,)    # seeds at the intermediate scaling points (stated in the protocol)
    control_seeds: tuple[int, ...] = (0,)  # seeds of the best generator scored on the controls
    adapter_icl_exact: bool = False        # adapter + k-shot prompt: greedy exact match too (the long prompt makes it the
                                           # dearest scoring of the plan; quick scores its log-lik only)
    teacher_max_steps: int = 80            # held-out teachers: at most this many steps to their dev plateau
    teacher_check_every: int = 20
    suite_items: int = 8                   # test items per task for the suite table's base accuracy (all 297 tasks)

    @classmethod
    def preset(cls, profile: str, **overrides) -> "SuiteConfig":
        base = {"smoke": dict(steps=4, batch_size=2, per_adapter=2, pool=4, shots=2, top_k=8, seeds=(0, 1), prompt_pool=8,
                              teacher_max_steps=4, teacher_check_every=2, suite_items=1),
                "quick": dict(),
                "full": dict(steps=400, pool=64, seeds=(0, 1, 2, 3, 4), curve_seeds=(0, 1, 2), teacher_max_steps=2000,
                             teacher_check_every=50, suite_items=32, adapter_icl_exact=True)}[check_profile(profile)]
        return preset_config(cls, base, overrides)

    def __post_init__(self):
        check_known(self.objectives, tuple(OBJECTIVES), "generator objective(s)")
        if not self.seeds or self.steps < 1 or self.shots < 1 or self.pool < self.per_adapter:
            raise ValueError(f"need seeds, steps ≥ 1, shots ≥ 1 and pool ≥ per_adapter; got {self}")

    @property
    def lm_examples(self) -> int:
        """Training examples through the language model per generator run (and per multi-task LoRA)."""
        return self.steps * self.batch_size * self.per_adapter


class SuiteLab:
    """The experiment of notebook 06 on one profile: see the module docstring."""

    def __init__(self, profile: str, model_name: str | None = None, plan: SuitePlan | None = None,
                 cfg: SuiteConfig | None = None, progress: bool = True):
        self.profile, self.progress = profile, progress
        self.model_name = model_name or models.MODEL_FOR_PROFILE[profile]
        self.model, self.tokenizer = models.load_model(self.model_name)
        self.fingerprint = models.model_fingerprint(self.model_name)
        self.plan, self.cfg = plan or SuitePlan.preset(profile), cfg or SuiteConfig.preset(profile)
        self.zoo_cfg = teacher_run.ZooConfig.preset(profile)
        self.lora_config = self.zoo_cfg.lora_config()
        self.lora_tokenizer = LoRATokenizer2D(LoraLayout.from_config(self.model.config, rank=self.zoo_cfg.rank,
                                                                     targets=self.zoo_cfg.targets))
        self.gcfg = GeneratorConfig.preset(profile)
        self.encoder = models.load_encoder()
        self.near, self.far = self.plan.heldout("near"), self.plan.heldout("far")
        self.heldout = self.near + self.far
        self.root = llgbm_home() / "suite"
        self.largest = self.plan.train_sizes[-1]          # the headline scaling point (None: every training task)
        self._encoded: dict = {}                          # MiniLM encodings of training prompts, shared by all runs

    # ------------------------------------------------------------------ what every method is scored on

    @property
    def n_test(self) -> int:
        return self.plan.test_items

    def tag(self, *parts) -> str:
        """A cache key over the model, the held-out items and `parts`."""
        items = [(t, tasks.get_task(t).items(self.plan.test_items, self.plan.dev_items)) for t in self.heldout]
        return hash_bytes(json.dumps([self.fingerprint, repr(items), *map(str, parts)]).encode())[:16]

    def _cached_scores(self, name: str, compute, *parts) -> dict:
        """{task: {correct, loglik}} for test then dev items, computed once and kept as JSON."""
        saved = cache.cached(self.root / f"{name}-{self.tag(name, *parts)}.json", compute)
        return cache.arrays(saved["scores"] if "scores" in saved else saved, float)

    def split(self, scores: dict, split: str = "test") -> dict:
        return compare.split_items(scores, split, self.n_test)

    # ------------------------------------------------------------------ references and baselines

    @cached_property
    def teachers(self) -> dict[str, dict]:
        """{held-out task: its plateau teacher's run record} (trained once, crash-safe)."""
        pcfg = plateau.PlateauConfig.preset(self.profile, max_steps=self.cfg.teacher_max_steps,
                                           check_every=self.cfg.teacher_check_every)
        out = {}
        for t in tqdm(self.heldout, desc="held-out teachers to their dev plateau", disable=not self.progress):
            out[t] = plateau.train_to_plateau(self.model, self.tokenizer, t, 0, self.zoo_cfg, pcfg, self.root / "teachers",
                                              progress=False)
        return out

    def teacher_folder(self, task: str):
        return self.root / "teachers" / self.teachers[task]["checkpoints"][0]["path"]

    def references(self) -> dict[str, dict]:
        """{"base": scores, "teacher": scores}: the base model and each task's own teacher in shared forwards."""
        hashes = [self.teachers[t]["checkpoints"][0]["hash"] for t in self.heldout]

        def compute():
            out = {"base": {}, "teacher": {}}
            for t in tqdm(self.heldout, desc="base and teachers", disable=not self.progress, leave=False):
                s = evaluate_adapters(self.model, self.tokenizer, tasks.get_task(t), [None, self.teacher_folder(t)],
                                      n=self.n_test, n_dev=self.plan.dev_items, lora_config=self.lora_config)
                for m, sc in zip(out, s):
                    out[m][t] = dict(correct=sc.correct.astype(float), loglik=sc.loglik)
            return out
        saved = cache.cached(self.root / f"references-{self.tag('references', *hashes)}.json", compute)
        return {m: cache.arrays(v, float) for m, v in saved.items()}

    def icl(self) -> dict:
        """k-shot prompting: the task's fixed demonstrations (`baselines.demonstrations`) before every prompt."""
        def compute():
            out = {}
            for t in tqdm(self.heldout, desc=f"{self.cfg.shots}-shot prompting", disable=not self.progress, leave=False):
                task = tasks.get_task(t)
                s = evaluate_task(self.model, self.tokenizer, task, self.n_test, prefix=icl_prefix(task, self.cfg.shots),
                                  n_dev=self.plan.dev_items)
                out[t] = dict(correct=s.correct.astype(float), loglik=s.loglik)
            return out
        return self._cached_scores("icl", compute, self.cfg.shots)

    def multitask(self, seed: int) -> tuple[dict, dict]:
        """One multi-task LoRA (the zoo's rank and targets, lr `baselines.MULTITASK_LR`) on the training
        tasks of the largest scaling point, their first `pool` examples, for a generator run's LM examples
        (`SuiteConfig.lm_examples`: steps × batch of batch_size·per_adapter): (scores, run record)."""
        names = tuple(self.plan.training(self.largest))
        mixture = PoolMixture("multitask_lora", names, pool=self.cfg.pool)
        batch = self.cfg.batch_size * self.cfg.per_adapter
        zcfg = replace(self.zoo_cfg, steps=self.cfg.steps, batch_size=batch, n_checkpoints=1, seeds=(seed,), tasks=names,
                       lr=MULTITASK_LR, eval_items=4)
        key = hash_bytes(json.dumps([self.fingerprint, names, self.cfg.pool, zcfg.training_key()]).encode())[:12]
        record = teacher_run.train_teacher(self.model, self.tokenizer, "multitask_lora", seed, zcfg,
                                           self.root / "multitask" / key, progress=False, task=mixture)
        folder = self.root / "multitask" / key / record["checkpoints"][-1]["path"]

        def compute():
            out = {}
            for t in self.heldout:
                s = evaluate_adapters(self.model, self.tokenizer, tasks.get_task(t), [folder], n=self.n_test,
                                      n_dev=self.plan.dev_items, lora_config=self.lora_config)[0]
                out[t] = dict(correct=s.correct.astype(float), loglik=s.loglik)
            return out
        return self._cached_scores("multitask", compute, key, seed), record

    # ------------------------------------------------------------------ generators

    @cached_property
    def offset(self):
        """Where every generator starts: a fresh peft LoRA's init, as DnD tokens (no zoo needed)."""
        return lora_init_tokens(self.model, self.lora_config, self.lora_tokenizer, seed=0)

    @cached_property
    def outputs(self) -> OutputSupervision:
        """SFT and cd losses over every training task's example pool (cd's teacher outputs cached on disk)."""
        return OutputSupervision(self.model, self.tokenizer, self.plan.training(self.largest), llgbm_home(), self.lora_config,
                                 self.lora_tokenizer, self.fingerprint, self.cfg.pool, self.cfg.per_adapter, self.cfg.top_k,
                                 context_shots=self.cfg.shots)

    def train(self, objective: str, seed: int, size: int | None | str = "largest") -> training.TrainResult:
        """A generator trained with `objective` ("sft" or "cd") on scaling point `size` (default: the
        largest; None: every training task)."""
        check_known([objective], tuple(OBJECTIVES), "generator objective")
        train_objective, teacher = OBJECTIVES[objective]
        size = self.largest if size == "largest" else size
        data = TaskData(self.plan.training(size), self.encoder, self.gcfg, self.lora_tokenizer, self.offset, teacher=teacher,
                        prompt_pool=self.cfg.prompt_pool, encoded=self._encoded)
        tcfg = training.TrainingConfig.preset(self.profile, train_objective, steps=self.cfg.steps, batch_size=self.cfg.batch_size,
                                              sft_examples=self.cfg.pool, sft_per_adapter=self.cfg.per_adapter,
                                              kd_top_k=self.cfg.top_k, keep_steps=())
        return training.train(data, self.gcfg, tcfg, seed, progress=False, outputs=self.outputs,
                              meta=dict(base_model=self.model_name, model_fingerprint=self.fingerprint, suite_objective=objective))

    def evaluate(self, results: list, control: str = "own", with_icl: bool = False, loglik_only: bool = False,
                 dev: bool = True) -> list[dict]:
        """Held-out scores (test then dev items; `dev=False`: test items alone, where no choice is made)
        of generator runs, in shared forwards and cached per run: conditioned on the task's own prompts
        or a `control`'s, and with the k-shot prompt (`with_icl`)."""
        check_known([control], CONTROLS, "control")
        prefix = (lambda task: icl_prefix(task, self.cfg.shots)) if with_icl else None
        return sample.evaluate_many(results, self.encoder, self.model, self.tokenizer, self.lora_tokenizer, self.lora_config,
                                    self.heldout, self.n_test, progress=False, condition=self.condition(control),
                                    loglik_only=loglik_only, n_dev=self.plan.dev_items if dev else 0, prefix=prefix)

    def condition(self, control: str):
        """What the generator reads for a held-out task: its own train prompts (None), the next held-out
        task's ("other": a cyclic shift, so no task reads its own), or random text of the same lengths."""
        if control == "own":
            return None
        if control == "other":
            nxt = {t: self.heldout[(i + 1) % len(self.heldout)] for i, t in enumerate(self.heldout)}
            return lambda task: tasks.get_task(nxt[task.name]).prompts("train")
        return lambda task: random_texts(task.prompts("train"), seed=task.name)


@dataclass(frozen=True)
class PoolMixture(TaskMixture):
    """A TaskMixture over the first `pool` training examples of each member (what a generator sees)."""
    pool: int = 16

    @cached_property
    def train(self):
        return tuple(((t, x), y) for t in self.members for x, y in tasks.get_task(t).train[:self.pool])


def random_texts(like: list[str], seed: str) -> list[str]:
    """Random lowercase words, one text per text of `like` and as long: the random-text control."""
    rng = np.random.default_rng(list(seed.encode()))
    letters = np.array(list(string.ascii_lowercase + "     "))
    return ["".join(rng.choice(letters, size=max(1, len(s)))).strip() or "a" for s in like]
