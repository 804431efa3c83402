"""The per-batch inputs of the offline objectives.

The trainer turns a batch of pairs into per-sequence quantities (policy log-probs from one
concatenated forward over chosen and rejected rows, cached reference log-probs, rewards) and hands
them to the method's objective; objectives never see models or data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.cache import cache_key, cached_rows, cached_tensors, model_fingerprint
from alignlab.config import OptimConfig, TrainConfig
from alignlab.data.layouts import PairLayout
from alignlab.data.options import data_options
from alignlab.data.tokenise import TokenizedPair, fingerprint_tokens
from alignlab.data.unpaired import UnpairedLoad, load_unpaired
from alignlab.errors import AlignlabError
from alignlab.models.backends import make_backend
from alignlab.models.generate import STOP_RULE, GenerationConfig
from alignlab.models.loading import batch_logps, load_causal_lm, load_tokenizer
from alignlab.objectives.losses import sampled_log_z
from alignlab.objectives.registry import Method, PairBatch
from alignlab.training.policy import as_reference
from alignlab.training.reference import compute_sequence_logps, reference_and_revision

log = logging.getLogger(__name__)


def check_rewards_available(config: TrainConfig, pairs) -> None:
    """VAR needs a reward per response: from the reward model, else from the data."""
    if config.reward_model:
        return
    missing = [p for p in pairs if p.reward_chosen is None or p.reward_rejected is None]
    if missing:
        raise AlignlabError(f"{config.data}: method '{config.method}' needs rewards, but pair "
                            f"'{missing[0].id}' (and {len(missing) - 1} more) has no "
                            "reward_chosen/reward_rejected; pass --reward_model PATH or add those fields")


def pair_rewards(config: TrainConfig, pairs, cache_dir: Path, device) -> dict[str, torch.Tensor]:
    """Rewards of every chosen and rejected response: from the reward model, else the data."""
    if config.reward_model:
        from alignlab.models.score import RewardScorer

        texts = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs], ensure_ascii=False)
        # Everything the scores depend on: the texts as the scorer renders and cuts them, and the numerics
        # (a run scores under its mixed precision's autocast: alignlab.training.offline.pair_tables).
        key = cache_key("rewards", model_fingerprint(config.reward_model, cache_dir),
                        hashlib.sha256(texts.encode()).hexdigest(), numerics(config),
                        f"max_length={config.max_length} raw_prompts={config.raw_prompts}")

        def compute():
            scorer = RewardScorer(config.reward_model, config.dtype, config.trust_remote_code,
                                  config.max_length, device, raw_prompts=config.raw_prompts)
            prompts = [p.prompt for p in pairs]
            batch = 4 * config.batch_size  # no gradients to keep: as for the reference pass
            return {"chosen": scorer.score(prompts, [p.chosen for p in pairs], batch),
                    "rejected": scorer.score(prompts, [p.rejected for p in pairs], batch)}

        return cached_tensors(cache_dir, "rewards", key, compute)[0]
    return {"chosen": torch.tensor([p.reward_chosen for p in pairs], dtype=torch.float32),
            "rejected": torch.tensor([p.reward_rejected for p in pairs], dtype=torch.float32)}


def numerics(config: OptimConfig) -> str:
    """What the numbers of a reference pass depend on besides the model and data: the weights' dtype,
    and the autocast of `mixed_precision` the pass runs under (the key of a run without it unchanged)."""
    return config.dtype if config.mixed_precision == "no" else f"{config.dtype} autocast {config.mixed_precision}"


# Pairs per stored chunk of a reference pass: a killed pass keeps the chunks it finished.
REFERENCE_CHUNK_BATCHES = 32


@dataclass
class ReferencePass:
    """The reference log-probs a run uses: `logps` "chosen" and "rejected", one per example (NaN for
    an example the run does not use); `pairs` examples were needed, `cached` of them came from the cache."""

    logps: dict[str, torch.Tensor]
    pairs: int
    cached: int

    @property
    def hit(self) -> bool:
        """The cache held every pair the run needs: no reference pass ran."""
        return self.cached == self.pairs


def reference_logps(config: TrainConfig, examples, pad_id: int, cache_dir: Path, device, policy,
                    layout: PairLayout, needed: list[int] | None = None) -> ReferencePass:
    """Reference log-probs of the examples `needed` (default: all), cached per pair. When the
    reference is the policy's own starting point (the default), the untrained policy computes them
    (a LoRA policy with its adapter off), so the model is loaded once, not twice.

    A pair's key is the reference model's fingerprint, the numerics and the pair's token ids: a
    longer run reads what a shorter one computed and computes only the pairs it lacks. The missing
    pairs are computed in the order of their width in `layout` (as `compute_sequence_logps` orders
    them), in chunks of whole batches; a pair's value depends on the pairs it shares a batch with
    only by float rounding (a different summation order in a wider batch)."""
    reference, revision = reference_and_revision(config)
    needed = list(range(len(examples))) if needed is None else sorted(needed)
    order = sorted(needed, key=lambda i: layout.row_width(examples[i]))
    context = (model_fingerprint(reference, cache_dir, revision), numerics(config))
    keys = [cache_key("reference-logps", *context, fingerprint_tokens([examples[i]])) for i in order]
    models = []  # the reference model, loaded when the first pair is missing

    def compute(positions: list[int]) -> dict[str, torch.Tensor]:
        if not models:
            log.info("computing reference log-probs with %s", reference)
            models.append(policy if reference == config.model else load_causal_lm(
                reference, config.dtype, config.trust_remote_code, revision))
        model = models[0]
        with as_reference(model):  # a LoRA policy's base: the policy with its adapter off
            return compute_sequence_logps(model.to(device), [examples[order[p]] for p in positions], pad_id,
                                          config.batch_size, device, layout)

    values, cached = cached_rows(cache_dir, "reference-logps", keys, ("chosen", "rejected"), compute,
                                 chunk=REFERENCE_CHUNK_BATCHES * config.batch_size)
    logps = {name: torch.full((len(examples),), float("nan")) for name in values}
    for name, column in values.items():
        logps[name][order] = column
    return ReferencePass(logps, len(order), cached)


def sampled_prompt_log_z(config: TrainConfig, pairs, cache_dir: Path, device, policy) -> torch.Tensor:
    """VAR's `sampled` normaliser: log Ẑ(x) per distinct prompt (indexed by `prompt_groups`), from
    `z_samples` responses per prompt sampled from the reference and scored by the reward model.

    The samples' rewards — not log Ẑ, which also depends on λ — are cached, keyed by the reference
    and reward models, the prompts, K, the generation settings and the seed: a λ sweep samples once.
    Sampling is exact (temperature 1, no top-p) because Ẑ estimates E_{y∼πref}[exp(r/λ)]; responses
    may use the room the trainer leaves them, max_length − max_prompt_length tokens, and are drawn by
    `generation_backend` (also in the key, with the stop rule).
    """
    from alignlab.training.grpo import distinct_prompts, encode_prompts, sample_and_score

    reference, revision = reference_and_revision(config)
    k = config.params["z_samples"]
    max_new_tokens = config.max_length - config.max_prompt_length
    prompts = distinct_prompts(pairs)  # in prompt_groups' order: first appearance
    key = cache_key("sampled-z", model_fingerprint(reference, cache_dir, revision),
                    model_fingerprint(config.reward_model, cache_dir),
                    hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode()).hexdigest(),
                    f"k={k} max_new_tokens={max_new_tokens} max_prompt_length={config.max_prompt_length} "
                    f"seed={config.seed} backend={config.generation_backend} stops={STOP_RULE} "
                    f"raw_prompts={config.raw_prompts}", numerics(config))

    def compute():
        from alignlab.models.score import RewardScorer

        log.info("sampling %d responses for each of %d prompts from %s to estimate Z(x)", k, len(prompts), reference)
        model = policy if reference == config.model else load_causal_lm(reference, config.dtype,
                                                                         config.trust_remote_code, revision)
        tokenizer = load_tokenizer(reference, config.trust_remote_code, revision)
        scorer = RewardScorer(config.reward_model, config.dtype, config.trust_remote_code, config.max_length, device,
                              raw_prompts=config.raw_prompts)
        generation = GenerationConfig(max_new_tokens, temperature=1.0, top_p=1.0, batch_size=4 * config.batch_size,
                                      seed=config.seed)
        prompt_ids, _ = encode_prompts(tokenizer, prompts, config.max_prompt_length, config.raw_prompts)
        backend = make_backend(config.generation_backend, model.to(device), tokenizer, reference, revision=revision,
                               device=device, trust_remote_code=config.trust_remote_code,
                               max_model_len=config.max_length)
        with as_reference(model):  # a LoRA policy's base: the policy with its adapter off
            samples = sample_and_score(backend, scorer, prompts, prompt_ids, k, generation)
        return {"rewards": samples.rewards}

    rewards = cached_tensors(cache_dir, "sampled-z", key, compute)[0]["rewards"]
    return sampled_log_z(rewards, config.params["lam"]).float()



# Per generated token, how far a gathered layout's log-probs may stray from the padded layout's
# before a model counts as not honouring it: rounding is ~1e-6 in float32 and ~1e-2 in half
# precision; a model ignoring the mask or the position ids is off by ~0.1 or more.
LAYOUT_TOLERANCE, LAYOUT_HALF_TOLERANCE = 1e-3, 5e-2
# The layout check's pairs: several, so that a packed row holds more than one pair and its mask is
# tested, each cut to a prompt's last and a response's first tokens (a mask, position ids and the
# output layer's gather are wrong at any length). Whole pairs cost: 4 HH pairs on SmolLM2-135M,
# the padded and the packed forward, took 3.4 s of a 20 s run.
LAYOUT_CHECK_PAIRS, LAYOUT_CHECK_PROMPT_TOKENS, LAYOUT_CHECK_RESPONSE_TOKENS = 4, 24, 12
CUSTOM_MASK_ATTENTION = ("sdpa", "eager")


def set_attention(model, implementation: str) -> None:
    """The attention kernel `attn_implementation` names, or an error saying why it cannot be used."""
    try:
        model.set_attn_implementation(implementation)
    except (ImportError, ValueError) as err:
        raise AlignlabError(f"config: attn_implementation {implementation!r} cannot be used with this model here "
                            f"({str(err).splitlines()[0]}); leave attn_implementation unset for transformers' "
                            "choice") from None


def candidate_layout(attention: str | None, packing: bool, max_length: int) -> PairLayout:
    """The layout to try for an attention implementation (see `choose_layout`). Packed rows hold up
    to max_length / 2 tokens: a mask does not make attention cheaper, and its cost grows with the
    square of a row's width (64 HH-RLHF pairs at max_length 512 trained in 11.8 s with rows of 512, 10.0 s with 256)."""
    if attention in CUSTOM_MASK_ATTENTION:
        return PairLayout("packed", max(1, max_length // 2)) if packing else PairLayout("shared-prompt")
    if packing:  # flash-attention: sequence boundaries from the position ids (its varlen kernel)
        return PairLayout("position-packed")
    log.info("attention implementation %r takes no custom mask: padded pair batches", attention)
    return PairLayout("padded")


def choose_layout(model, examples, pad_id: int, device, packing: bool, max_length: int) -> PairLayout:
    """The cheapest pair layout (alignlab.data.layouts) that gives this model the padded layout's
    log-probs.

    Attention that takes a custom 4-D mask (transformers' sdpa and eager) gets the shared-prompt
    layout, packed when `packing`; other attention (flash-attention) gets,
    when `packing`, the position-packed layout, whose sequence boundaries it reads from the position
    ids. The choice is checked in eval mode on a few pairs, cut short (LAYOUT_CHECK_PAIRS), against the
    padded layout: a model that ignores the mask or the position ids, or whose output layer cannot be
    restricted to the response positions (alignlab.models.logps.output_layer_at), falls back to the
    padded layout, with a warning."""
    candidate = candidate_layout(getattr(model.config, "_attn_implementation", None), packing, max_length)
    if candidate.name == "padded":
        return candidate
    sample = [TokenizedPair(e.prompt_ids[-LAYOUT_CHECK_PROMPT_TOKENS:], e.chosen_ids[:LAYOUT_CHECK_RESPONSE_TOKENS],
                            e.rejected_ids[:LAYOUT_CHECK_RESPONSE_TOKENS]) for e in examples[:LAYOUT_CHECK_PAIRS]]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            padded_batch, candidate_batch = ({k: v.to(device) for k, v in layout.collate(sample, pad_id).items()}
                                             for layout in (PairLayout("padded"), candidate))
            difference = (batch_logps(model, padded_batch) - batch_logps(model, candidate_batch)).abs()
            per_token = (difference / padded_batch["lengths"]).max().item()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:  # a model that rejects the mask's shape
        # or whose output layer takes something other than (rows, positions, hidden)
        log.warning("%s batches failed on this model (%s): padded pair batches", candidate.name, err)
        return PairLayout("padded")
    finally:
        model.train(was_training)
    full_precision = model.dtype == torch.float32
    if per_token > (LAYOUT_TOLERANCE if full_precision else LAYOUT_HALF_TOLERANCE):
        log.warning("this model does not honour the %s layout's attention mask, position ids or output-layer "
                    "gather (log-probs differ by %.3g per token from the padded layout): padded pair batches",
                    candidate.name, per_token)
        return PairLayout("padded")
    return candidate



def prompt_groups(pairs) -> torch.Tensor:
    """An integer per pair; pairs with the same prompt share it (VAR's per-prompt normaliser)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(json.dumps(p.prompt, sort_keys=True), len(ids)) for p in pairs])


def load_labelled_examples(config: TrainConfig) -> UnpairedLoad:
    """An unpaired method's (KTO's) data: unpaired records, or the pairs unpaired, as pseudo-pairs
    whose rejected slot holds a mismatched completion for the KL estimate (alignlab.data.unpaired)."""
    loaded = load_unpaired(config.data, config.data_format, filter=config.data_filter,
                           preference=config.data_preference, split=config.data_split, **data_options(vars(config)))
    if not loaded.pairs:
        raise AlignlabError(f"{loaded.source}: no usable examples ({loaded.summary()})")
    return loaded


def pair_batch(model, batch: dict, method: Method, reference, rewards, groups, log_z=None, labels=None) -> PairBatch:
    """Per-sequence quantities of a collated batch: policy log-probs from one forward pass; `labels`
    (an unpaired method's, one per example) go to PairBatch.labels."""
    logps = batch_logps(model, batch)
    index = batch["index"].cpu()
    n = len(index)
    device = logps.device

    def take(table, name):
        return table[name][index].to(device)

    return PairBatch(
        chosen_logps=logps[:n], chosen_lengths=batch["lengths"][:n],
        rejected_logps=logps[n:] if method.uses_rejected else None,
        rejected_lengths=batch["lengths"][n:] if method.uses_rejected else None,
        ref_chosen_logps=take(reference, "chosen") if reference else None,
        ref_rejected_logps=take(reference, "rejected") if reference else None,
        reward_chosen=take(rewards, "chosen") if rewards else None,
        reward_rejected=take(rewards, "rejected") if rewards else None,
        prompt_groups=groups[index].to(device),
        log_z=log_z[groups[index]].to(device) if log_z is not None else None,
        labels=labels[index].to(device) if labels is not None else None)


def logratio_margin(b: PairBatch) -> torch.Tensor:
    """Chosen-minus-rejected margin shown while training: of log-ratios to the reference when the
    method has one, else of per-token log-probs; NaN when rejected responses are not forwarded. With
    labels (KTO, whose rejected slot is no preference), the mean log-ratio of the completions signed by
    their labels: + for desirable, − for undesirable."""
    if b.labels is not None:
        return torch.where(b.labels.bool(), 1.0, -1.0).mul(b.chosen_logps - b.ref_chosen_logps).mean()
    if b.rejected_logps is None:
        return torch.full((), float("nan"), device=b.chosen_logps.device)
    if b.ref_chosen_logps is not None:
        return ((b.chosen_logps - b.ref_chosen_logps) - (b.rejected_logps - b.ref_rejected_logps)).mean()
    return (b.chosen_logps / b.chosen_lengths - b.rejected_logps / b.rejected_lengths).mean()



def check_pairs_differ(config: OptimConfig, examples) -> None:
    """A pair whose chosen and rejected tokens are equal has nothing to prefer; when every pair is
    such (e.g. max_length cuts all responses to a shared opening), training would learn nothing."""
    if all(ex.chosen_ids == ex.rejected_ids for ex in examples):
        raise AlignlabError(f"{config.data}: in all {len(examples)} pairs the chosen response has the same tokens as "
                            f"the rejected one after truncation to max_length {config.max_length} (prompts to "
                            f"max_prompt_length {config.max_prompt_length}): there is nothing to prefer; raise "
                            "max_length, or lower max_prompt_length to leave the responses more room")

