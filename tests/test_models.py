import pytest
import torch

from llgbm.core import models


@pytest.mark.real_model
def test_smollm2_from_wheel_answers_a_factual_question(real_home):
    model, tok = models.load_model("smollm2", device="cpu")
    assert model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert not hasattr(model.config, "quantization_config")
    # tied embeddings survive the safetensors round trip: one tensor, not two copies
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_cache_is_reused_not_rebuilt(real_home, monkeypatch):
    def boom(path):
        raise AssertionError("cache rebuilt although it exists")
    monkeypatch.setattr(models, "_build_smollm2", boom)
    monkeypatch.setattr(models, "_build_tiny", boom)
    model, _ = models.load_model("smollm2", device="cpu")     # would raise if it converted the GGUF again
    assert model.config.num_hidden_layers == 30


def test_fingerprint_is_a_content_hash_of_config_and_weights(real_home, tmp_path):
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file
    folder = real_home / "tiny"
    expected = hashlib.sha256((folder / "config.json").read_bytes() + (folder / "model.safetensors").read_bytes()).hexdigest()
    assert models.model_fingerprint("tiny") == expected
    assert models.model_fingerprint("smollm2") != models.model_fingerprint("tiny")
    # a local folder without a stored fingerprint is hashed from its files; one changed weight changes it
    copy = tmp_path / "tiny-copy"
    shutil.copytree(folder, copy)
    (copy / "llgbm_fingerprint.json").unlink()
    assert models.model_fingerprint(str(copy)) == expected
    w = load_file(str(copy / "model.safetensors"))
    k = next(iter(w))
    w[k] = w[k].clone()
    w[k].view(-1)[0] += 1.0
    save_file(w, str(copy / "model.safetensors"))
    assert models.model_fingerprint(str(copy)) != expected


def test_tiny_preset_shares_the_real_tokenizer(tiny, real_home):
    model, tok = tiny
    real_tok = models.load_tokenizer("smollm2")
    assert model.config.num_hidden_layers == 2
    assert len(tok) == len(real_tok) == model.config.vocab_size
    assert tok("Add 1 to 41").input_ids == real_tok("Add 1 to 41").input_ids


def test_local_folder_loads_through_the_same_call(real_home):
    model, _ = models.load_model(str(real_home / "tiny"), device="cpu")
    assert model.config.num_hidden_layers == 2


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        models.resolve_model_path(str(tmp_path / "no-such-model"))


def test_encoder_embeds_sentences(real_home):
    enc = models.load_encoder(device="cpu")
    emb = enc.encode(["Add 1 to the number.", "Add 2 to the number.", "Translate into German."])
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]  # two arithmetic prompts are closer than arithmetic vs translation
