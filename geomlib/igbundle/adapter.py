"""IGBundle (seed 000): the bundle adapter as its public code really works, and its sheaf loss.

After every decoder block, an adapter projects the hidden state H → D_bot; heads give, per token, P
mixture components, each with a weight, a D_lat-dim Gaussian (mean, log-sigma clamped to ±5) and K
fibre logits. Components exchange one round of messages with affinities
softmax_j(−α·KL(N_i‖N_j) − β·KL(Cat_i‖Cat_j)); one update step moves the fibre logits, precisions,
means and weights by fixed step sizes; the weighted components go through a zero-initialised output
projection back to H, added as x + scale·out. The defaults are the seed's (configs/…_lora.yaml).

The sheaf loss comes in two versions. `faithful` is the seed's code: JS divergence between
patch-averaged fibres weighted by ω = exp(−‖c_r − c_s‖²/τ) with τ = 1; at D_lat = 128 the squared
centre distances are ~256, ω underflows to exactly 0 in float32, and the loss and its gradient are
identically zero. `normalised` makes the idea work: τ scales with D_lat (so ω and the soft
assignment live in a useful range), and the energy is the sheaf Laplacian's Dirichlet energy with
orthogonal restriction maps as a Rayleigh quotient over the fibres' deviation from uniform, so
neither F = 0 nor collapsing every fibre to uniform minimises it.

"Sigma" (`MixtureState.sigma`) is the seed's statistic: the mean of exp(log-sigma), the average
width of the mixture components. It is a width, not a curvature."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from llgbm.core.utils import check_known

SHEAF_MODES = ("off", "faithful", "normalised")
PREC_MIN, PREC_MAX = 1e-6, 1e4     # the seed's clamp on the updated precision: σ = prec^-1/2 stays in [0.01, 1000]


@dataclass
class IGBundleConfig:
    hidden_size: int | None = None       # H, taken from the model when attached
    bottleneck_dim: int | None = 256     # D_bot (None: H // 4, as the seed's code)
    num_components: int = 4              # P
    num_categories: int = 16             # K, fibre categories
    latent_dim: int = 128                # D_lat
    alpha: float = 1.0                   # weight of the base (Gaussian) KL in the affinity
    beta: float = 1.0                    # weight of the fibre (categorical) KL
    eta_f: float = 0.1                   # update step: fibre logits
    eta_b: float = 0.01                  # update step: means and precisions
    eta_w: float = 0.01                  # update step: component weights
    adapter_scale: float = 0.1           # x + scale·out
    dropout: float = 0.05
    sheaf: str = "faithful"              # off | faithful | normalised
    sheaf_weight: float = 0.01           # the seed's lambda_glue
    num_patches: int = 8                 # R, sheaf patch centres
    tau: float = 1.0                     # faithful: τ itself; normalised: τ per latent dimension
    lora_r: int | None = None            # the seed config's LoRA beside the adapters (r 8, α 32 on q/k/v/o)
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self):
        if self.sheaf not in SHEAF_MODES:
            raise ValueError(f"unknown sheaf mode {self.sheaf!r}; expected one of {', '.join(SHEAF_MODES)}")
        for name in ("num_components", "num_categories", "latent_dim", "num_patches"):
            if getattr(self, name) < 1:
                raise ValueError(f"IGBundleConfig.{name} must be ≥ 1, got {getattr(self, name)}")

    @property
    def d_bot(self) -> int:
        if self.hidden_size is None:
            raise ValueError("IGBundleConfig.hidden_size is unset: attach the config to a model first")
        return self.bottleneck_dim or self.hidden_size // 4

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "IGBundleConfig":
        check_known(d, cls.__dataclass_fields__, "IGBundle config key(s)")
        return cls(**{k: (tuple(v) if k == "lora_targets" else v) for k, v in d.items()})


def adapter_params(cfg: IGBundleConfig) -> int:
    """Trainable parameters of one IGBundleAdapter (exact; tested against the built module)."""
    h, b, p, k, d = cfg.hidden_size, cfg.d_bot, cfg.num_components, cfg.num_categories, cfg.latent_dim
    lin = lambda i, o: i * o + o  # noqa: E731
    return (lin(h, b) + lin(b, p) + 2 * lin(b, p * d) + lin(b, p * k) + lin(2 * d + k, b) + lin(b, b)
            + lin(b, k) + 2 * lin(b, d) + lin(b, 1) + lin(2 * d + k, b) + lin(b, h))


def scaled(cfg: IGBundleConfig, target_params: int, n_layers: int) -> IGBundleConfig:
    """The `scaled` preset: the seed's shape (P, K, D_lat/D_bot ratio 1/2) with D_bot chosen so that
    the adapters of `n_layers` layers hold as close to `target_params` trainable parameters as possible."""
    best = None
    for b in range(8, 4 * cfg.hidden_size + 1, 4):
        c = replace(cfg, bottleneck_dim=b, latent_dim=max(1, b // 2))
        err = abs(n_layers * adapter_params(c) - target_params)
        if best is None or err < best[0]:
            best = (err, c)
    return best[1]


# ------------------------------------------------------------------ the mixture and its divergences

@dataclass
class MixtureState:
    w_logits: torch.Tensor     # (B, T, P)
    m: torch.Tensor            # (B, T, P, D_lat)
    log_sigma: torch.Tensor    # (B, T, P, D_lat)
    u: torch.Tensor            # (B, T, P, K) fibre logits

    @property
    def w(self) -> torch.Tensor:
        return F.softmax(self.w_logits, -1)

    @property
    def p(self) -> torch.Tensor:
        return F.softmax(self.u, -1)

    @property
    def sigma(self) -> torch.Tensor:
        """The seed's "sigma": mean component width exp(log-sigma), a scalar."""
        return self.log_sigma.exp().mean()


def kl_diag_gauss(m1, ls1, m2, ls2) -> torch.Tensor:
    """KL(N(m1, e^{2·ls1}) ‖ N(m2, e^{2·ls2})) for diagonal Gaussians, summed over the last dim."""
    return (ls2 - ls1 + (torch.exp(2 * ls1) + (m1 - m2) ** 2) / (2 * torch.exp(2 * ls2)) - 0.5).sum(-1)


def kl_categorical_logits(u1, u2) -> torch.Tensor:
    """KL(Cat(softmax u1) ‖ Cat(softmax u2)), summed over the last dim."""
    lp1, lp2 = F.log_softmax(u1, -1), F.log_softmax(u2, -1)
    return (lp1.exp() * (lp1 - lp2)).sum(-1)


def affinity(state: MixtureState, alpha: float, beta: float) -> torch.Tensor:
    """(B, T, P, P): softmax over j of −α·KL(N_i‖N_j) − β·KL(Cat_i‖Cat_j)."""
    m, ls, u = state.m, state.log_sigma, state.u
    d_base = kl_diag_gauss(m.unsqueeze(3), ls.unsqueeze(3), m.unsqueeze(2), ls.unsqueeze(2))
    d_fibre = kl_categorical_logits(u.unsqueeze(3), u.unsqueeze(2))
    return F.softmax(-alpha * d_base - beta * d_fibre, -1)


# ------------------------------------------------------------------ adapters

class IGBundleAdapter(nn.Module):
    """One bundle adapter: hidden states (B, T, H) -> (x + scale·out, the updated MixtureState)."""

    def __init__(self, cfg: IGBundleConfig):
        super().__init__()
        self.cfg = cfg
        h, b, p, k, d = cfg.hidden_size, cfg.d_bot, cfg.num_components, cfg.num_categories, cfg.latent_dim
        self.input_proj = nn.Linear(h, b)
        self.proj_w, self.proj_m, self.proj_ls, self.proj_u = nn.Linear(b, p), nn.Linear(b, p * d), nn.Linear(b, p * d), nn.Linear(b, p * k)
        self.msg_processor = nn.Sequential(nn.Linear(2 * d + k, b), nn.GELU(), nn.Linear(b, b))
        self.head_s_u, self.head_g_m, self.head_g_ls, self.head_r_w = nn.Linear(b, k), nn.Linear(b, d), nn.Linear(b, d), nn.Linear(b, 1)
        self.comp_out = nn.Linear(2 * d + k, b)
        self.out_proj = nn.Linear(b, h)
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.input_proj.weight, std=0.01)
        nn.init.zeros_(self.out_proj.weight)          # the adapter starts as the identity
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, MixtureState]:
        c = self.cfg
        B, T, _ = x.shape
        P, K, D = c.num_components, c.num_categories, c.latent_dim
        hb = self.input_proj(x)
        w_logits = self.proj_w(hb)
        m = self.proj_m(hb).view(B, T, P, D)
        log_sigma = self.proj_ls(hb).view(B, T, P, D).clamp(-5.0, 5.0)
        u = self.proj_u(hb).view(B, T, P, K)
        A = affinity(MixtureState(w_logits, m, log_sigma, u), c.alpha, c.beta)
        msg = A @ self.msg_processor(torch.cat([m, log_sigma, u], -1))           # (B, T, P, D_bot)
        u_new = u + c.eta_f * self.head_s_u(msg)
        prec = torch.exp(-2 * log_sigma)
        prec_new = (prec + c.eta_b * self.head_g_ls(msg)).clamp(PREC_MIN, PREC_MAX)
        log_sigma_new = -0.5 * torch.log(prec_new)
        m_new = m + c.eta_b * self.head_g_m(msg) / (1.0 + prec)
        w_new = w_logits + c.eta_w * self.head_r_w(msg).view(B, T, P)
        state = MixtureState(w_new, m_new, log_sigma_new, u_new)
        comp = self.comp_out(torch.cat([m_new, log_sigma_new, u_new], -1))
        pooled = (comp * state.w.unsqueeze(-1)).sum(2)
        return x + c.adapter_scale * self.dropout(self.out_proj(pooled)), state


class HoulsbyAdapter(nn.Module):
    """The established bottleneck adapter at the same position: x + up(GELU(down(x))), zero-initialised
    up-projection (Houlsby et al. 2019; one adapter per block, as Pfeiffer's placement)."""

    def __init__(self, hidden_size: int, bottleneck_dim: int):
        super().__init__()
        self.down, self.up = nn.Linear(hidden_size, bottleneck_dim), nn.Linear(bottleneck_dim, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x + self.up(F.gelu(self.down(x))), None


# ------------------------------------------------------------------ sheaf losses

def _patch_fibres(state: MixtureState, centres: torch.Tensor, tau: float) -> torch.Tensor:
    """p̄_r = Σ_i γ_ir w_i p_i / Σ_i γ_ir w_i with γ = softmax_r(−‖m_i − c_r‖²/τ): (B, T, R, K)."""
    m, w, p = state.m.float(), state.w.float(), state.p.float()
    gamma = F.softmax(-(m.unsqueeze(-2) - centres.float()).pow(2).sum(-1) / tau, -1)      # (B, T, P, R)
    mass = gamma * w.unsqueeze(-1)
    return torch.einsum("btpk,btpr->btrk", p, mass) / (mass.sum(2).unsqueeze(-1) + 1e-6)


class SheafLoss(nn.Module):
    """The seed's sheaf gluing loss, as its code computes it (mode 'faithful')."""

    def __init__(self, num_patches: int, d_lat: int, tau: float = 1.0):
        super().__init__()
        self.patch_centers = nn.Parameter(torch.randn(num_patches, d_lat))
        self.tau = tau

    def omega(self) -> torch.Tensor:
        c = self.patch_centers.float()
        return torch.exp(-(c.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1) / self.tau)

    def forward(self, state: MixtureState) -> torch.Tensor:
        pb = _patch_fibres(state, self.patch_centers, self.tau)
        pr, ps = pb.unsqueeze(3), pb.unsqueeze(2)
        mid = 0.5 * (pr + ps)
        js = 0.5 * ((pr * (torch.log(pr + 1e-8) - torch.log(mid + 1e-8))).sum(-1)
                    + (ps * (torch.log(ps + 1e-8) - torch.log(mid + 1e-8))).sum(-1))
        R = pb.shape[2]
        mask = torch.triu(torch.ones(R, R, device=pb.device), diagonal=1)
        return (self.omega() * js * mask).sum() / (pb.shape[0] * pb.shape[1] * mask.sum() + 1e-8)


class NormalisedSheafLoss(nn.Module):
    """Sheaf Dirichlet energy as a Rayleigh quotient (mode 'normalised').

    Nodes are the R patches, with x_r = p̄_r − 1/K (the patch fibre's deviation from uniform); edges
    are weighted by ω_rs = exp(−‖c_r − c_s‖²/(τ·D_lat)); restriction maps F_r are orthogonal K×K
    (torch's orthogonal parametrisation, so F = 0 is impossible). The loss
    Σ_{r<s} ω_rs‖F_r x_r − F_s x_s‖² / (Σ_{r<s} ω_rs · Σ_r ‖x_r‖²) is scale-invariant in x, so
    shrinking every fibre towards uniform (collapse) cannot lower it; it is 0 exactly on global sections."""

    def __init__(self, num_patches: int, d_lat: int, num_categories: int, tau: float = 1.0, identity_maps: bool = False):
        super().__init__()
        self.patch_centers = nn.Parameter(torch.randn(num_patches, d_lat))
        self.tau_eff = tau * d_lat
        self.identity_maps, self.num_categories = identity_maps, num_categories   # identity: the ablation F_r = I
        self.maps = nn.ModuleList(nn.utils.parametrizations.orthogonal(nn.Linear(num_categories, num_categories, bias=False))
                                  for _ in range(0 if identity_maps else num_patches))

    def restriction(self) -> torch.Tensor:
        """The R restriction maps, (R, K, K), each orthogonal."""
        if self.identity_maps:
            return torch.eye(self.num_categories, device=self.patch_centers.device).expand(self.patch_centers.shape[0], -1, -1)
        return torch.stack([m.weight for m in self.maps])

    def omega(self) -> torch.Tensor:
        c = self.patch_centers.float()
        return torch.exp(-(c.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(-1) / self.tau_eff)

    def energy_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) of the quotient for node vectors x: (B, T, R, K)."""
        fx = torch.einsum("rkj,btrj->btrk", self.restriction(), x)
        diff = (fx.unsqueeze(3) - fx.unsqueeze(2)).pow(2).sum(-1)                     # (B, T, R, R)
        R = x.shape[2]
        mask = torch.triu(torch.ones(R, R, device=x.device), diagonal=1)
        om = self.omega() * mask
        return (om * diff).sum((-1, -2)), om.sum() * x.pow(2).sum((-1, -2))

    def forward(self, state: MixtureState) -> torch.Tensor:
        pb = _patch_fibres(state, self.patch_centers, self.tau_eff)
        num, den = self.energy_terms(pb - 1.0 / pb.shape[-1])
        return (num / den.clamp_min(1e-12)).mean()


def sheaf_loss(cfg: IGBundleConfig) -> nn.Module | None:
    """The configured sheaf loss module (None when off)."""
    if cfg.sheaf == "off":
        return None
    if cfg.sheaf == "faithful":
        return SheafLoss(cfg.num_patches, cfg.latent_dim, cfg.tau)
    return NormalisedSheafLoss(cfg.num_patches, cfg.latent_dim, cfg.num_categories, cfg.tau)


@dataclass
class SigmaLog:
    """Per-layer mean component width ("sigma") of the latest forward, kept for logging."""
    values: dict[int, float] = field(default_factory=dict)

    def mean(self) -> float:
        return float(sum(self.values.values()) / len(self.values)) if self.values else math.nan
