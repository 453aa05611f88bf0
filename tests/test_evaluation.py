import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llgbm.core.tasks import get_task
from llgbm.eval import scoring


def test_target_logprobs_match_full_logits(tiny):
    """Reference check: logits at answer positions only == log-softmax of the full forward."""
    model, tok = tiny
    task = get_task("add_1")
    enc = scoring.encode_pairs(tok, task, task.test[:5])
    batch = scoring.build_batch(enc, tok.pad_token_id)
    with torch.no_grad():
        fast = scoring.target_logprobs(model, batch)
        logp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    ref = [logp[i, j - 1, batch["input_ids"][i, j]] for i in range(5) for j in range(batch["input_ids"].shape[1])
           if batch["target_mask"][i, j]]
    torch.testing.assert_close(fast, torch.stack(ref), atol=1e-5, rtol=1e-5)
    assert batch["target_mask"].sum() == sum(len(t) for _, t in enc)


def test_greedy_answers_do_not_depend_on_padding(tiny):
    model, tok = tiny
    task = get_task("country_en_to_de")
    inputs = ["Germany", "Bosnia and Herzegovina", "Chad"]   # different prompt lengths
    batched = scoring.greedy_answers(model, tok, task, inputs, max_new_tokens=4, batch_size=3)
    alone = [scoring.greedy_answers(model, tok, task, [x], max_new_tokens=4)[0] for x in inputs]
    assert batched == alone


def test_length_sorted_batches_score_each_item_as_it_scores_alone(tiny):
    """gold_loglik batches items of similar length together (less padding) and still returns the
    scores in item order, each equal to the item scored alone."""
    model, tok = tiny
    task = get_task("country_en_to_de")
    pairs = task.test[:7]
    encoded = scoring.encode_pairs(tok, task, pairs)
    rows = scoring.length_batches(encoded, 3)
    assert sorted(j for r in rows for j in r) == list(range(7)) and [len(r) for r in rows] == [3, 3, 1]
    lengths = [[len(encoded[j][0]) + len(encoded[j][1]) for j in r] for r in rows]
    assert all(max(a) <= min(b) for a, b in zip(lengths, lengths[1:]))      # batches in length order
    assert len({sum(map(len, e)) for e in encoded}) > 1                     # the test needs mixed lengths
    batched = scoring.gold_loglik(model, tok, task, pairs, batch_size=3)
    alone = np.array([scoring.gold_loglik(model, tok, task, [p])[0] for p in pairs])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    two = scoring.gold_loglik(model, tok, task, pairs, batch_size=3, copies=2)
    assert two.shape == (2, 7)
    np.testing.assert_allclose(two, np.stack([alone, alone]), atol=1e-5)


def test_evaluate_task_scores_items(tiny):
    model, tok = tiny
    s = scoring.evaluate_task(model, tok, get_task("add_1"), n=6)
    assert s.correct.shape == s.loglik.shape == (6,)
    assert 0.0 <= s.acc <= 1.0 and np.all(s.loglik < 0)
    assert len(s.predictions) == 6


def test_a_correct_answer_is_scored_correct(tiny, monkeypatch):
    """The scorer's wiring: when the greedy answers are the gold ones, every item counts as correct,
    and the log-likelihood (computed from the model, not the answers) does not change."""
    model, tok = tiny
    task = get_task("add_1")
    before = scoring.evaluate_task(model, tok, task, n=5)
    monkeypatch.setattr(scoring, "greedy_answers", lambda m, t, task, inputs, *a, **k: [dict(task.test)[x] for x in inputs])
    after = scoring.evaluate_task(model, tok, task, n=5)
    assert after.acc == 1.0 and before.acc == 0.0
    np.testing.assert_array_equal(after.loglik, before.loglik)


@pytest.mark.real_model
def test_smollm2_answers_some_items_correctly(real_home):
    """On the real model, an easy task is partly solved zero-shot, and each correct item's greedy
    answer is exactly the gold answer."""
    from llgbm.core import models, tasks
    model, tok = models.load_model("smollm2", device="cpu")
    words = "apple house river mountain green table window garden music paper water light stone cloud bread chair smile dream ocean forest"
    task = tasks.register_task("echo_word", "Repeat the input word exactly.", [(w, w) for w in words.split()], overwrite=True)
    s = scoring.evaluate_task(model, tok, task, n=10)
    gold = [y for _, y in task.test[:10]]
    assert 0.2 <= s.acc <= 1.0, s.predictions          # SmolLM2-135M-Instruct repeats about 4 words in 10
    assert all(p.strip() == g for p, g, c in zip(s.predictions, gold, s.correct) if c)


def test_adapters_evaluated_in_shared_forwards_score_as_one_at_a_time(tiny_zoo, tiny):
    """Base, two teacher folders and a state dict scored together (rows repeated per adapter, hooks
    apply adapter i to copy i, generate's KV cache included) equal peft's one-at-a-time scores."""
    from llgbm.core import lora
    model, tok = tiny
    root, manifest, _, _ = tiny_zoo
    folders = [root / r["path"] for r in manifest[:2]]
    avg = lora.average_adapters(folders)
    cfg = __import__("peft").LoraConfig.from_pretrained(str(folders[0]))
    task = get_task("add_1")
    adapters = [None, *folders, avg]
    together = scoring.evaluate_adapters(model, tok, task, adapters, n=12, lora_config=cfg, batch_size=5)
    alone = [scoring.evaluate_adapter(model, tok, task, a, n=12, lora_config=cfg, batch_size=5) for a in adapters]
    assert len(together) == 4
    for t, a in zip(together, alone):
        np.testing.assert_allclose(t.loglik, a.loglik, atol=1e-4)
        assert t.predictions == a.predictions and np.array_equal(t.correct, a.correct)
    assert not np.allclose(together[0].loglik, together[1].loglik)       # the adapters did differ
    assert not any("lora" in n for n, _ in model.named_modules())
    only_ll = scoring.evaluate_adapters(model, tok, task, adapters[:2], n=12, loglik_only=True)   # config from the folder
    np.testing.assert_allclose(only_ll[1].loglik, alone[1].loglik, atol=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        scoring.evaluate_adapters(model, tok, task, [])


def test_a_shared_prefix_is_read_once_and_scores_as_read_whole(tiny_zoo, tiny, monkeypatch):
    """k-shot scoring: the demonstrations' KV cache, computed once per task and adapter copy, gives
    the log-liks and greedy answers of reading prefix + prompt whole, for the base model alone and
    for adapters in shared forwards (prompts of several lengths, test and dev items)."""
    model, tok = tiny
    root, manifest, _, _ = tiny_zoo
    folders = [root / r["path"] for r in manifest[:2]]
    task = get_task("country_en_to_de")
    prefix = "".join(task.prompt(x) + task.target(y) for x, y in task.train[:3])
    prompts = tok([prefix + task.prompt(x) for x, _ in task.test[:10]], add_special_tokens=False).input_ids
    shared = scoring.SharedPrefix(model, tok, prefix)
    assert shared.tails(prompts) is not None and len({len(p) for p in prompts}) > 1     # the shortcut, on ragged prompts
    merged = tok(["Output: Be" + "rlin"], add_special_tokens=False).input_ids
    assert scoring.SharedPrefix(model, tok, "Output: Be").tails(merged) is None         # a token across the boundary: read whole

    def score():
        many = scoring.evaluate_adapters(model, tok, task, [None, *folders], n=10, batch_size=4, prefix=prefix, n_dev=2)
        return [*many, scoring.evaluate_task(model, tok, task, n=10, batch_size=4, prefix=prefix)]
    fast = score()
    monkeypatch.setattr(scoring, "REUSE_PREFIX", False)
    whole = score()
    for f, w in zip(fast, whole):
        np.testing.assert_allclose(f.loglik, w.loglik, atol=1e-4)
        assert f.predictions == w.predictions
    assert not np.allclose(fast[0].loglik, fast[1].loglik)            # the adapters did differ
