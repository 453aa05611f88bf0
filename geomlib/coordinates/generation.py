"""The seed's generator, with its README's API: `GeometricGenerator(model, tokenizer, device=…)`,
`generate(prompt, config=GenerationConfig(…))` → (text, coordinates), `get_coordinate_statistics`
and `interpolate_coordinates`. θ is the predictor's amortised proposal, optionally refined by a few
SGD steps (the seed: 2 steps, lr 0.01, penalty 0.1·‖θ − θ̂‖²), tracked by an EMA (0.95) over the
generated tokens, and its uncertainty var(θ − θ_context) picks the decoding: nucleus sampling above
the threshold, greedy below. Generation runs on HF's KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass
class GenerationConfig:
    max_length: int = 256                   # new tokens
    temperature: float = 0.7
    top_p: float = 0.92
    use_coordinate_refinement: bool = True
    refinement_steps: int = 2
    refinement_lr: float = 0.01
    refinement_penalty: float = 0.1
    coordinate_ema_alpha: float = 0.95
    coordinate_uncertainty_threshold: float = 0.5
    max_coordinate_norm: float = 50.0


class CoordinateContextTracker:
    """θ_context ← α·θ_context + (1 − α)·θ, from zero (the seed's tracker)."""

    def __init__(self, alpha: float = 0.95):
        self.alpha, self.context = alpha, None

    def reset(self) -> None:
        self.context = None

    def update(self, theta: torch.Tensor) -> torch.Tensor:
        base = torch.zeros_like(theta) if self.context is None else self.context
        self.context = self.alpha * base + (1 - self.alpha) * theta.detach()
        return self.context


def refine(host, input_ids: torch.Tensor, theta0: torch.Tensor, steps: int = 2, lr: float = 0.01,
           penalty: float = 0.1) -> tuple[torch.Tensor, list[float]]:
    """SGD on one θ (B, C) for the prompt: next-token NLL of the prompt under θ + penalty·‖θ − θ̂‖².
    (The seed's loss scores the last position's logits against the token already in the input, not
    the next one; we score every next token of the prompt.) Returns (θ, the loss before each step and
    after the last)."""
    theta = theta0.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=lr)
    losses = []

    def loss_at(th):
        with host.coordinates(theta=th):
            logits = host.model(input_ids=input_ids).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))
        return nll + penalty * ((th - theta0) ** 2).sum()

    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_at(theta)
            losses.append(loss.item())
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses.append(loss_at(theta).item())
    return theta.detach(), losses


def choose_token(logits: torch.Tensor, theta: torch.Tensor, context: torch.Tensor, cfg: GenerationConfig,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, bool]:
    """(next token (B,), sampled?) — nucleus sampling when var(θ − θ_context) exceeds the threshold,
    greedy otherwise (the README's rule; the code samples top-k at half temperature instead)."""
    uncertainty = torch.var(theta - context).item()
    if uncertainty <= cfg.coordinate_uncertainty_threshold:
        return logits.argmax(-1), False
    logits = logits / cfg.temperature
    srt, idx = logits.sort(-1, descending=True)
    drop = srt.softmax(-1).cumsum(-1) > cfg.top_p
    drop[..., 1:] = drop[..., :-1].clone()
    drop[..., 0] = False
    srt = srt.masked_fill(drop, float("-inf"))
    pick = torch.multinomial(srt.softmax(-1), 1, generator=generator)
    return idx.gather(-1, pick).squeeze(-1), True


class GeometricGenerator:
    def __init__(self, model, tokenizer, device: str = "cpu"):
        self.host, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        self.host.to(self.device).eval()
        self.tracker = CoordinateContextTracker()
        self.sampled: list[bool] = []

    def _ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(self.device)
        if ids.shape[1] == 0:
            raise ValueError("the prompt is empty: nothing to predict coordinates from")
        return ids

    def coordinates_of(self, text: str) -> torch.Tensor:
        """The predictor's θ for the whole text (its last position, under causal pooling)."""
        with torch.no_grad():
            theta = self.host.predict(self._ids(text))
        return theta[:, -1] if theta.dim() == 3 else theta

    @torch.no_grad()
    def generate(self, prompt: str, config: GenerationConfig | None = None,
                 generator: torch.Generator | None = None, progress: bool = True) -> tuple[str, list[torch.Tensor]]:
        """(text, θ per new token). Each token with refinement re-reads the whole text `refinement_steps`
        + 1 times, so the seed's default 256 tokens take minutes on a CPU: `progress` shows a bar with
        the time per token and what is left."""
        cfg = config or GenerationConfig()
        ids = self._ids(prompt)
        self.tracker = CoordinateContextTracker(cfg.coordinate_ema_alpha)
        self.sampled, history = [], []
        past, step_ids, out = None, ids, ids
        for _ in tqdm(range(cfg.max_length), desc="generate" + (" (refining θ)" if cfg.use_coordinate_refinement else ""),
                      unit="token", disable=not progress, leave=False):
            out_ = self.host.model(input_ids=step_ids, past_key_values=past, use_cache=True)
            past, logits = out_.past_key_values, out_.logits[:, -1].float()
            theta = self.host.last_theta
            theta = theta[:, -1] if theta.dim() == 3 else theta
            if cfg.use_coordinate_refinement and cfg.refinement_steps:
                theta, _ = refine(self.host, out, theta, cfg.refinement_steps, cfg.refinement_lr, cfg.refinement_penalty)
                with self.host.coordinates(theta=theta):
                    logits = self.host.model(input_ids=out).logits[:, -1].float()
            norm = theta.norm(dim=-1, keepdim=True)
            theta = torch.where(norm > cfg.max_coordinate_norm, theta * cfg.max_coordinate_norm / norm, theta)
            context = self.tracker.update(theta)
            history.append(theta)
            nxt, sampled = choose_token(logits, theta, context, cfg, generator)
            self.sampled.append(sampled)
            out = torch.cat([out, nxt[:, None]], 1)
            step_ids = nxt[:, None]
            if self.tokenizer.eos_token_id is not None and (nxt == self.tokenizer.eos_token_id).all():
                break
        return self.tokenizer.decode(out[0].tolist(), skip_special_tokens=True), history

    def get_coordinate_statistics(self, text: str) -> dict:
        theta = self.coordinates_of(text)[0].cpu()
        top = theta.abs().topk(min(10, theta.numel()))
        return dict(norm=theta.norm().item(), mean=theta.mean().item(), std=theta.std().item(), max=theta.max().item(),
                    min=theta.min().item(), top_10_dims=top.indices.tolist(), top_10_values=top.values.tolist())

    @torch.no_grad()
    def interpolate_coordinates(self, prompt1: str, prompt2: str, steps: int = 5, max_new_tokens: int = 16) -> list[str]:
        """Greedy continuations of prompt1 under θ moving from prompt1's to prompt2's in `steps`
        (the seed decodes one argmax per input position instead of continuing the text)."""
        if steps < 2:
            raise ValueError(f"steps must be ≥ 2 (both ends), got {steps}")
        a, b = self.coordinates_of(prompt1), self.coordinates_of(prompt2)
        ids, texts = self._ids(prompt1), []
        for i in range(steps):
            w = i / (steps - 1)
            theta = (1 - w) * a + w * b                                     # linear, as the seed does
            with self.host.coordinates(theta=theta):
                out = self.host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                               do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            texts.append(self.tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
        return texts
