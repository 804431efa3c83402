"""Per-token log-probs of a causal LM's next tokens, from its final hidden states, in chunks.

The output layer maps each position's final hidden state h to logits z = W·h + b over the
vocabulary, and log π(y | ·) = z_y − logsumexp(z). With a large vocabulary the [tokens, vocabulary]
float32 logits, and what autograd keeps of them for the backward pass, are most of a small model's
training memory: SmolLM2-135M's 49,152-token vocabulary makes 8 pairs of 256 tokens' logits 805 MB
per copy, against 540 MB for all its weights. `linear_token_logps` computes the log-probs
`chunk_rows` positions at a time and keeps for the backward pass only h, W, b, the targets and each
position's logsumexp; the backward pass recomputes each chunk's logits to form
∂/∂z = g·(onehot(y) − softmax(z)) and accumulates ∂/∂h and ∂/∂W (∂/∂b) from it. No tensor of the
full [tokens, vocabulary] shape ever exists, and the values are the full path's: each chunk's logits
are computed as the model's output layer computes them (the matmul in the dtype autocast gives it,
then float32).

`final_states` runs the model's own forward — through DDP or PEFT wrappers, under the autocast that
forward runs in — with the output layer passing its input through, and returns those hidden states
with the output layer to apply (`FinalStates`). Where that could not give exactly the model's
logits (`chunkable_head`: an output layer other than a plain nn.Linear, a model that changes its
logits after the output layer, sharded weights) it returns the model's own logits instead, with a
log line saying why; callers use both the same way.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# One chunk's float32 logits take about this many bytes (341 positions of a 49,152-token vocabulary):
# its matmul is still large enough to run at full speed, and the backward pass's few temporaries of
# that size (the logits, their softmax) stay small beside the weights, whatever the batch.
CHUNK_LOGITS_BYTES = 64 * 2**20

# Config attributes (of the text config) whose models change the logits after the output layer
# (Gemma 2/3's soft-capping, Cohere's logit_scale, Granite's logits_scaling, a padded vocabulary cut
# back): at any value other than these neutral ones, the chunked path would not be exact.
LOGIT_TRANSFORMS = {"final_logit_softcapping": (None,), "logit_scale": (None, 1, 1.0),
                    "logits_scaling": (None, 1, 1.0), "unpadded_vocab_size": (None,)}


def chunk_rows(vocabulary: int) -> int:
    """How many positions one chunk holds: CHUNK_LOGITS_BYTES of float32 logits, at least one."""
    return max(1, CHUNK_LOGITS_BYTES // (4 * vocabulary))


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) per position, without materialising a full log-softmax copy of the logits."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """Logits / T of a chunk whose inputs are already in the matmul's dtype, in float32 (float64 stays)."""
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits / temperature if temperature != 1 else logits


class LinearLogSoftmax(torch.autograd.Function):
    """log softmax(W·h + b)[y] / T per row of `hidden`, chunk by chunk, forward and backward (see the
    module docstring). The matmuls run in `compute_dtype` (autocast's dtype where the model's output
    layer ran under autocast) with autocast off, so the backward pass computes as the forward did."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, compute_dtype, chunk):
        ctx.set_materialize_grads(False)
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(compute_dtype), weight.to(compute_dtype)
            bias_c = None if bias is None else bias.to(compute_dtype)
            logps = torch.empty(len(hidden), dtype=torch.promote_types(compute_dtype, torch.float32),
                                device=hidden.device)
            logsumexp = torch.empty_like(logps)
            for start in range(0, len(hidden), chunk):
                logits = _chunk_logits(hidden_c[start:start + chunk], weight_c, bias_c, temperature)
                logsumexp[start:start + chunk] = torch.logsumexp(logits, -1)
                picked = logits.gather(-1, targets[start:start + chunk, None]).squeeze(-1)
                logps[start:start + chunk] = picked - logsumexp[start:start + chunk]
        ctx.save_for_backward(hidden, weight, bias, targets, logsumexp)
        ctx.temperature, ctx.compute_dtype, ctx.chunk = temperature, compute_dtype, chunk
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        hidden, weight, bias, targets, logsumexp = ctx.saved_tensors
        wants_hidden, wants_weight, wants_bias = ctx.needs_input_grad[:3]
        if grad_logps is None:
            return (None,) * 7
        dtype, chunk = ctx.compute_dtype, ctx.chunk
        grad_hidden = torch.empty_like(hidden) if wants_hidden else None
        accumulate = torch.promote_types(dtype, torch.float32)  # the chunks' sums, at least in float32
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if wants_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=accumulate, device=bias.device) if wants_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            hidden_c, weight_c = hidden.to(dtype), weight.to(dtype)
            bias_c = None if bias is None else bias.to(dtype)
            for start in range(0, len(hidden), chunk):
                stop = start + chunk
                chunk_hidden = hidden_c[start:stop]
                # ∂ log p_y / ∂z = onehot(y) − softmax(z), times the incoming gradient (and 1/T)
                grad_logits = _chunk_logits(chunk_hidden, weight_c, bias_c, ctx.temperature)
                grad_logits.sub_(logsumexp[start:stop, None]).exp_()
                grad_logits[torch.arange(len(chunk_hidden), device=hidden.device), targets[start:stop]] -= 1
                grad_logits.mul_(-grad_logps[start:stop, None].to(grad_logits.dtype))
                if ctx.temperature != 1:
                    grad_logits.div_(ctx.temperature)
                grad_logits = grad_logits.to(dtype)
                if wants_hidden:
                    grad_hidden[start:stop] = grad_logits @ weight_c
                if wants_weight and grad_weight.dtype == dtype:  # in place: no [vocabulary, hidden] temporary
                    grad_weight.addmm_(grad_logits.T, chunk_hidden)
                elif wants_weight:
                    grad_weight += grad_logits.T @ chunk_hidden
                if wants_bias:
                    grad_bias += grad_logits.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None, None, None)


def linear_token_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float = 1.0,
                       compute_dtype: torch.dtype | None = None, chunk: int | None = None) -> Tensor:
    """log softmax((W·h + b) / T)[y] per row of `hidden` (positions × hidden size; `targets` the y
    per row), float32 (float64 for a float64 matmul), without the [positions, vocabulary] logits
    (`LinearLogSoftmax`). The matmul runs in `compute_dtype` (default: the weight's); a chunk holds
    `chunk` rows (default `chunk_rows`)."""
    return LinearLogSoftmax.apply(hidden, weight, bias, targets, temperature, compute_dtype or weight.dtype,
                                  chunk or chunk_rows(len(weight)))


def _unwrapped(model):
    """The model a DDP wrapper holds (DDP keeps every weight whole on every process), else `model`."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


_full_logits_reasons: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → why, logged once


def _fall_back(core, reason: str) -> None:
    if core not in _full_logits_reasons:
        log.info("log-probs from full logits for %s: %s", type(core).__name__, reason)
        _full_logits_reasons[core] = reason


def chunkable_head(model) -> torch.nn.Linear | None:
    """The output layer the chunked path applies itself, or None (with the reason logged once) where
    its result would not be exactly the model's logits."""
    core = _unwrapped(model)
    if core in _full_logits_reasons:
        return None
    if hasattr(core, "module"):  # FSDP, DeepSpeed: a weight may be a shard outside its module's forward
        return _fall_back(core, f"the model is wrapped by {type(core).__name__}")
    head = core.get_output_embeddings() if hasattr(core, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:  # a PEFT adapter or ModulesToSaveWrapper, a quantised layer
        return _fall_back(core, f"its output layer is a {type(head).__name__}, not a plain nn.Linear")
    if type(head.weight) is not torch.nn.Parameter or hasattr(head.weight, "ds_id") or hasattr(head, "_hf_hook"):
        return _fall_back(core, "its output layer's weight is not a plain tensor on its device (sharded, offloaded)")
    config = core.config.get_text_config() if hasattr(core.config, "get_text_config") else core.config
    changed = [name for name, neutral in LOGIT_TRANSFORMS.items() if getattr(config, name, None) not in neutral]
    if changed:
        return _fall_back(core, f"it changes its logits after the output layer ({', '.join(changed)})")
    return head


@contextmanager
def output_layer_at(model, rows: Tensor, positions: Tensor):
    """While active, the model's output layer maps only the hidden states at [rows, positions] (two
    1-D index tensors), so its logits come back with shape (1, len(positions), vocab) — or, for a
    model with no output layer to hook, whole (the caller gathers them; the yielded flag says which).

    The prompts' and the padding's logits are never used, and the output layer is a large share of a
    small model's FLOPs (an 8,192-token vocabulary at hidden 512: a quarter of a 23M Llama's), forward
    and backward. What a model does after its output layer (soft-capping, a logit scale) is per logit,
    so it applies to the gathered logits alike; choose_layout checks the result against the padded
    layout's full logits before training uses it."""
    head = model.get_output_embeddings()
    if head is None:
        yield False
        return

    def keep_positions(module, args):
        hidden, *rest = args
        return (hidden[rows, positions][None], *rest)

    handle = head.register_forward_pre_hook(keep_positions)
    try:
        yield True
    finally:
        handle.remove()


@contextmanager
def passing_through(head: torch.nn.Linear):
    """While active, `head` returns its input (the final hidden states) instead of logits; the yielded
    dict receives that input and the dtype the head's matmul would have run in (autocast's, if on)."""
    seen = {}

    def pass_through(hidden):
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device) and hidden.is_floating_point()
        seen.update(hidden=hidden, compute_dtype=torch.get_autocast_dtype(device) if autocast else head.weight.dtype)
        return hidden

    own = head.__dict__.get("forward")  # a forward set on the instance (accelerate's hooks) goes back after
    head.forward = pass_through
    try:
        yield seen
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


@dataclass
class FinalStates:
    """What a causal LM gives at chosen positions `rows`, `positions` of its input: the final hidden
    states (positions × hidden size) with the output layer still to apply (`head`), or, where that
    would not be exact (`chunkable_head`), the model's own logits (`logits`, rows × length ×
    vocabulary, or 1 × positions × vocabulary when the output layer saw the chosen positions only)."""

    rows: Tensor
    positions: Tensor
    hidden: Tensor | None = None
    head: torch.nn.Linear | None = None
    compute_dtype: torch.dtype | None = None
    logits: Tensor | None = None

    def token_logps(self, targets: Tensor, temperature: float = 1.0) -> Tensor:
        """log softmax(logits / T)[target] at each chosen position (`targets`: one per position), float32."""
        if self.head is not None:
            return linear_token_logps(self.hidden, self.head.weight, self.head.bias, targets, temperature,
                                      self.compute_dtype)
        placed = torch.zeros(self.logits.shape[:2], dtype=targets.dtype, device=targets.device)
        placed[self.rows, self.positions] = targets
        logits = self.logits if temperature == 1 else self.logits / temperature
        return token_logps(logits, placed)[self.rows, self.positions]

    def chunks(self):
        """(start, stop) of the chunks the chosen positions are taken in: `chunk_rows` of them each."""
        size = len(self.rows)
        step = chunk_rows(self.head.out_features if self.head is not None else self.logits.shape[-1])
        return [(start, min(start + step, size)) for start in range(0, size, step)]

    @torch.no_grad()
    def chunk_logits(self, start: int, stop: int) -> Tensor:
        """The logits at chosen positions start..stop, as the model's output layer gives them, without gradient."""
        if self.head is None:
            return self.logits[self.rows[start:stop], self.positions[start:stop]]
        with torch.autocast(self.hidden.device.type, enabled=False):
            bias = None if self.head.bias is None else self.head.bias.to(self.compute_dtype)
            return F.linear(self.hidden[start:stop].to(self.compute_dtype), self.head.weight.to(self.compute_dtype),
                            bias)


def final_states(model, rows: Tensor, positions: Tensor, gather_in_head: bool = False, **inputs) -> FinalStates:
    """The model's final states at [rows, positions] of its input (two 1-D index tensors) from one
    forward of `model(**inputs)` (see `FinalStates`). With `gather_in_head` the output layer's input
    is gathered there before the layer sees it (`output_layer_at`), so that a model that falls back
    to its own logits computes them at those positions only; else they are taken afterwards."""
    core = _unwrapped(model)

    def gathering():
        return output_layer_at(core, rows, positions) if gather_in_head else nullcontext(False)

    head = chunkable_head(model)
    if head is not None:
        with gathering() as gathered, passing_through(head) as seen:
            returned = model(**inputs).logits
        hidden = seen.get("hidden")
        # Anything the model did after the output layer (beyond accelerate's upcast of half-precision
        # outputs) shows as a tensor other than the one the output layer returned.
        if hidden is not None and (returned is hidden or (returned.shape == hidden.shape
                                                          and torch.equal(returned, hidden.to(returned.dtype)))):
            check_gathered(core, hidden, positions, gathered)
            return FinalStates(rows, positions, hidden=hidden[0] if gathered else hidden[rows, positions], head=head,
                               compute_dtype=seen["compute_dtype"])
        _fall_back(core, "its forward changes what the output layer returns")
    with gathering() as gathered:
        logits = model(**inputs).logits
    if not gathered:
        return FinalStates(rows, positions, logits=logits)
    check_gathered(core, logits, positions, gathered)
    return FinalStates(torch.zeros_like(positions), torch.arange(len(positions), device=positions.device),
                       logits=logits)


def check_gathered(core, output: Tensor, positions: Tensor, gathered: bool) -> None:
    """An output layer that was to see the gathered positions only (`output_layer_at`) did."""
    if gathered and output.shape[:2] != (1, len(positions)):
        raise RuntimeError(f"{type(core).__name__}'s output layer did not keep the gathered positions: "
                           f"an output of shape {tuple(output.shape)} for {len(positions)} response tokens")
