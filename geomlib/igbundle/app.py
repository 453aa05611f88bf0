"""The seed's validation and chat: generate with the base model and with the adapters side by side,
report the average internal sigma, and serve a Gradio chat UI on 127.0.0.1 (default port 7860) that
also renders inline in JupyterLab."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from llgbm.core import models

from . import host as hosting

PROMPTS = ("Translate into German.\nInput: France\nOutput:", "Write the number in English words.\nInput: 42\nOutput:",
           "What is the capital of Italy?", "Give the ISO 3166 alpha-2 code of the country.\nInput: Japan\nOutput:")


def load_checkpoint(ckpt: Path | str, model_name: str | None = None):
    """(model with adapters, tokenizer, metadata): the base named by the checkpoint's config (or
    `model_name`), its fingerprint checked against the checkpoint's."""
    meta = hosting.verify(ckpt)
    name = model_name or meta.get("model", "smollm2")
    model, tok = models.load_model(name, device="cpu")
    hosting.load(model, ckpt, models.model_fingerprint(name))
    return model, tok, meta


@torch.no_grad()
def reply(model, tokenizer, prompt: str, max_new_tokens: int = 32, chat: bool = False) -> str:
    """Greedy continuation of a prompt (through the chat template when `chat`)."""
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def validate(model, tokenizer, prompts=PROMPTS, max_new_tokens: int = 24) -> dict:
    """Base and adapted generations side by side, and the average internal sigma (the mean width
    exp(log σ) of the mixture components over layers and prompts; a width, not a curvature)."""
    host = model.igbundle
    rows, sigmas = [], []
    for p in prompts:
        adapted = reply(model, tokenizer, p, max_new_tokens)
        sigmas.append(sum(host.sigma.values()) / max(1, len(host.sigma)))
        handles, host.handles = host.handles, []
        for h in handles:
            h.remove()
        try:
            base = reply(model, tokenizer, p, max_new_tokens)
        finally:
            layers = hosting.decoder_layers(model)
            host.handles = [layer.register_forward_hook(host.hook(i)) for i, layer in enumerate(layers)]
        rows.append(dict(prompt=p, base=base, igbundle=adapted))
    return dict(rows=rows, average_sigma=float(sum(sigmas) / len(sigmas)) if sigmas else float("nan"))


EMPTY_REPLY = "(the model produced no text: an end-of-turn token came first)"


def chat_reply(model, tokenizer, message: str) -> str:
    """The chat's answer: greedy through the chat template; an empty one said as such, never a blank bubble."""
    return reply(model, tokenizer, message, max_new_tokens=64, chat=True) or EMPTY_REPLY


def chat_app(model, tokenizer, title: str = "IGBundle chat", model_name: str = "the base model"):
    """A gradio ChatInterface over the adapted model (greedy, through the chat template)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # offline: no usage reports, no version checks
    import gradio as gr

    def respond(message, history):
        return chat_reply(model, tokenizer, message)
    return gr.ChatInterface(respond, title=title, description=f"{model_name} with IGBundle adapters (greedy decoding).",
                            api_name="chat")


def serve(model, tokenizer, port: int = 7860, block: bool = True, model_name: str = "the base model"):
    """Launch the chat app on 127.0.0.1:`port`; returns the app (non-blocking when `block` is False)."""
    demo = chat_app(model, tokenizer, model_name=model_name)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=not block, share=False,
                show_error=True, quiet=not block)
    return demo
