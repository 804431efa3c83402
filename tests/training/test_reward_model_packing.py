"""`train-rm` packs like DPO: a packed batch gives each response the Bradley–Terry loss and gradients
that transformers' classifier gives it forwarded alone, read where that classifier reads a score
(the rightmost token that is not the pad token)."""

import pytest
import torch
import torch.nn.functional as F

from alignlab.data.layouts import PairLayout
from alignlab.data.tokenise import TokenizedPair
from alignlab.training.reward_model import collate_rewards, pair_rewards, reward_layout


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory):
    from alignlab.models.loading import load_sequence_classifier
    from alignlab.models.tiny import build_tiny_classifier

    model = load_sequence_classifier(str(build_tiny_classifier(tmp_path_factory.mktemp("rm"), tiny_model, seed=3)))
    model.config.pad_token_id = PAD
    return model.float()


PAD = 0
# Varied prompt and response lengths; one rejected response ends in pad tokens (read before them),
# one is empty (its score is the prompt's last token's), one chosen response is all pad tokens.
EXAMPLES = [TokenizedPair([5, 6, 7], [8, 9], [10, 11, 12, 13]),
            TokenizedPair([14, 15], [16, 17, 18], [19, PAD, PAD]),
            TokenizedPair([20, 21, 22, 23], [24], []),
            TokenizedPair([25, 26], [PAD, PAD], [27, 28, 29])]


def alone_loss(model):
    """Each response forwarded alone (no padding, no packing) through transformers' classifier."""
    def reward(prompt, response):
        return model(input_ids=torch.tensor([prompt + response])).logits[0, 0]

    chosen = torch.stack([reward(e.prompt_ids, e.chosen_ids) for e in EXAMPLES])
    rejected = torch.stack([reward(e.prompt_ids, e.rejected_ids) for e in EXAMPLES])
    return -F.logsigmoid(chosen - rejected).mean()


def batch_loss(model, layout):
    batch = collate_rewards(layout, EXAMPLES, PAD)
    batch["index"] = torch.arange(len(EXAMPLES))
    chosen, rejected = pair_rewards(model, batch)
    return -F.logsigmoid(chosen - rejected).mean()


def gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", [PairLayout("packed", 16), PairLayout("shared-prompt"), PairLayout("padded")])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_gives_the_loss_and_gradients_of_each_response_alone(classifier, layout, attention):
    classifier.set_attn_implementation(attention)
    classifier.eval()  # dropout off: the two computations see the same network
    expected_loss = alone_loss(classifier)
    expected = gradients(classifier, expected_loss)
    loss = batch_loss(classifier, layout)
    assert loss.item() == pytest.approx(expected_loss.item(), abs=1e-5)
    got = gradients(classifier, loss)
    assert got.keys() == expected.keys() and "score.weight" in got
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    if layout.name == "packed":
        assert collate_rewards(layout, EXAMPLES, PAD)["input_ids"].shape[0] < len(EXAMPLES)  # pairs share rows


def test_train_rm_packs_when_its_model_honours_the_layout(classifier):
    classifier.set_attn_implementation("sdpa")
    assert reward_layout(classifier, EXAMPLES, PAD, "cpu", packing=True, max_length=32) == PairLayout("packed", 16)
    assert reward_layout(classifier, EXAMPLES, PAD, "cpu", packing=False, max_length=32) == PairLayout("shared-prompt")


def test_a_model_that_ignores_the_mask_trains_on_padded_batches(classifier, monkeypatch, caplog):
    classifier.set_attn_implementation("sdpa")
    backbone = classifier.model
    original = backbone.forward
    # right padding needs no mask under causal attention, so only the packed rewards go wrong
    monkeypatch.setattr(backbone, "forward", lambda *args, **kw: original(*args, **{**kw, "attention_mask": None}))
    assert reward_layout(classifier, EXAMPLES, PAD, "cpu", packing=True, max_length=32) == PairLayout("padded")
    assert "does not honour the packed layout" in caplog.text
