"""LoRA's input dropout fused into the adapter's A (alignlab.models.lora_dropout): the same numbers
as PEFT's dropout then A on the same random state, forward and backward, with less kept for the
backward pass."""

import copy

import pytest
import torch

from alignlab.models.loading import load_causal_lm
from alignlab.models.lora_dropout import DroppedInputLinear, fuse_lora_dropout

peft = pytest.importorskip("peft")


def adapted(tiny_model, dropout=0.3, **options):
    """The tiny Llama with a LoRA adapter on every linear layer whose B is random (PEFT's own
    initialisation zeroes it, which would hide A's gradient)."""
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear",
                             init_lora_weights=False, **options)
    return peft.get_peft_model(load_causal_lm(str(tiny_model)), config).train()


def forward_and_backward(model, input_ids, seed):
    torch.manual_seed(seed)
    logits = model(input_ids=input_ids).logits
    logits.square().mean().backward()
    return logits, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def test_fused_layers_give_peft_numbers_forward_and_backward(tiny_model):
    reference = adapted(tiny_model)
    fused = copy.deepcopy(reference)
    layers = sum(type(m).__name__ == "Linear" and hasattr(m, "lora_A") for m in fused.modules())
    assert fuse_lora_dropout(fused) == layers > 0
    assert fused.state_dict().keys() == reference.state_dict().keys()
    input_ids = torch.randint(3, 60, (3, 17))
    expected_logits, expected_grads = forward_and_backward(reference, input_ids, seed=11)
    logits, grads = forward_and_backward(fused, input_ids, seed=11)
    assert torch.equal(logits, expected_logits)  # the same noise, drawn by the same call
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # another draw gives other masks (the noise is not fixed at fusing)
    assert not torch.equal(forward_and_backward(fused, input_ids, seed=12)[0], logits)


def test_eval_mode_and_a_disabled_adapter_are_peft_s(tiny_model):
    reference = adapted(tiny_model).eval()
    fused = copy.deepcopy(reference)
    fuse_lora_dropout(fused)
    input_ids = torch.randint(3, 60, (2, 9))
    with torch.no_grad():
        assert torch.equal(fused(input_ids=input_ids).logits, reference(input_ids=input_ids).logits)
        with fused.disable_adapter(), reference.disable_adapter():
            assert torch.equal(fused(input_ids=input_ids).logits, reference(input_ids=input_ids).logits)


def saved_bytes(layer, x):
    """Bytes of the tensors other than parameters that a forward through `layer` keeps for backward."""
    parameters = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x)
    return sum(storages.values())


def test_a_fused_layer_keeps_its_input_and_a_byte_an_element(tiny_model):
    """One adapted q_proj on a (4, 32, hidden) float32 input x, rank 4: PEFT keeps the float noise
    and the dropped copy of x (4 + 4 bytes an element) and B's input (the rank-4 projection); the
    fused layer keeps x itself, which the layer's caller holds anyway for q, k and v, the kept
    elements as booleans (1 byte) and B's input."""
    reference = adapted(tiny_model)
    fused = copy.deepcopy(reference)
    fuse_lora_dropout(fused)
    layer_of = lambda model: model.base_model.model.model.layers[0].self_attn.q_proj  # noqa: E731
    hidden = layer_of(reference).in_features
    x = torch.randn(4, 32, hidden, requires_grad=True)
    elements, projection = x.numel(), 4 * 32 * 4 * 4
    assert saved_bytes(layer_of(reference), x) == 8 * elements + projection
    assert saved_bytes(layer_of(fused), x) == 4 * elements + elements + projection


def test_dora_and_zero_dropout_stay_as_peft_made_them(tiny_model):
    """DoRA uses the dropped input outside A too; dropout 0 is already PEFT's identity."""
    for model in (adapted(tiny_model, use_dora=True), adapted(tiny_model, dropout=0.0)):
        assert fuse_lora_dropout(model) == 0
        assert not any(isinstance(m, DroppedInputLinear) for m in model.modules())


def test_autocast_takes_the_plain_composition(tiny_model):
    """Under autocast the fused layer computes PEFT's dropout then A, casts and all: the same logits
    and gradients as PEFT's on the same random state."""
    reference = adapted(tiny_model)
    fused = copy.deepcopy(reference)
    fuse_lora_dropout(fused)
    input_ids = torch.randint(3, 60, (2, 9))
    outputs = []
    for model in (reference, fused):
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=input_ids).logits
        logits.float().square().mean().backward()
        outputs.append((logits, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    (expected_logits, expected_grads), (logits, grads) = outputs
    assert torch.equal(logits, expected_logits)
    assert grads.keys() == expected_grads.keys()
    assert all(torch.equal(grads[name], expected_grads[name]) for name in grads)
