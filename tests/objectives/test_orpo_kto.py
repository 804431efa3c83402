"""ORPO (reference-free) and KTO (unpaired completions): hand-computed values, TRL 1.16 parity on the
same per-sequence numbers (to 1e-6), finite-difference gradients, the registry entries, and tiny
training runs through `alignlab train` (the data side: tests/data/test_unpaired.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.cli import main
from alignlab.objectives.preference_losses import kto_loss, kto_reference_point, log1mexp, orpo_log_odds_ratio, orpo_loss
from alignlab.objectives.registry import PairBatch, get_method

F64 = torch.float64
TOL = dict(rtol=0, atol=1e-6)  # the brief: TRL parity to 1e-6


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ==================================================================================================
# ORPO
# ==================================================================================================

def log_odds(avg: float) -> float:
    return avg - math.log(1 - math.exp(avg))


def test_log1mexp_is_accurate_on_both_branches_and_finite_at_zero():
    x = t([-1e-10, -1e-6, -0.1, -0.6931, -0.6932, -1.0, -5.0, -40.0, -800.0])
    # each branch is accurate on both sides of −log 2: a reference switching at −0.5 checks both
    exact = [math.log1p(-math.exp(v)) if v < -0.5 else math.log(-math.expm1(v)) for v in x.tolist()]
    torch.testing.assert_close(log1mexp(x), t(exact), rtol=1e-12, atol=0)
    at_zero = torch.zeros(2, requires_grad=True)  # p = 1: clamped to 1 − ε, not −∞ and a NaN step
    (grad,) = torch.autograd.grad(log1mexp(at_zero).sum(), [at_zero])
    assert torch.isfinite(log1mexp(at_zero)).all() and torch.isfinite(grad).all()


def test_orpo_hand_values_unequal_lengths():
    w, lw = [-2.0, -6.0, -1.5], [2, 3, 5]
    l, ll = [-6.0, -3.0, -0.9], [3, 1, 3]
    beta = 0.25
    mean_lw = sum(lw) / len(lw)
    expected = [-wi / mean_lw - beta * math.log(sigmoid(log_odds(wi / a) - log_odds(li / b)))
                for wi, a, li, b in zip(w, lw, l, ll)]
    got = orpo_loss(t(w), t(l), t(lw), t(ll), beta)
    torch.testing.assert_close(got, t(expected), rtol=1e-12, atol=0)
    # the batch mean: the token-mean NLL of all chosen tokens, Σ −ℓθ(y_w) / Σ |y_w|, plus the odds term
    torch.testing.assert_close(got.mean(), t(-sum(w) / sum(lw) + sum(e + wi / mean_lw for e, wi in zip(expected, w))
                                             / 3), rtol=1e-12, atol=0)
    ratio = orpo_log_odds_ratio(t(w), t(l), t(lw), t(ll))
    torch.testing.assert_close(ratio, t([log_odds(wi / a) - log_odds(li / b) for wi, a, li, b in zip(w, lw, l, ll)]),
                               rtol=1e-12, atol=0)


def _random_sequences(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    lw = torch.randint(1, 30, (n,), generator=g).to(F64)
    ll = torch.randint(1, 30, (n,), generator=g).to(F64)
    w = -torch.rand(n, generator=g, dtype=F64) * 3 * lw  # mean token log-probs in (−3, 0)
    l = -torch.rand(n, generator=g, dtype=F64) * 3 * ll
    return w, l, lw, ll


def _trl_orpo(beta: float, w, l, lw, ll):
    """TRL's full ORPO loss, `ORPOTrainer.get_batch_loss_metrics`, on given per-sequence numbers:
    `concatenated_forward` stands in for the model and returns the averaged log-probs (average_log_prob=True)
    and the chosen NLL, TRL's `nn.CrossEntropyLoss` mean over the batch's chosen tokens, Σ −ℓθ(y_w) / Σ |y_w|."""
    from trl.experimental.orpo import ORPOTrainer

    n = w.shape[0]
    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(
        beta=beta, aux_loss_enabled=False,
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        concatenated_forward=lambda model, batch: (w / lw, l / ll, torch.zeros(n, 1, 2), torch.zeros(n, 1, 2),
                                                   -w.sum() / lw.sum()))
    loss, metrics = ORPOTrainer.get_batch_loss_metrics(trainer, None, {})
    return loss, metrics


@pytest.mark.parametrize("beta,seed", [(0.1, 0), (0.5, 1), (1.0, 2), (0.05, 3)])
def test_orpo_matches_trl_loss_and_gradients(beta, seed):
    pytest.importorskip("trl")
    w, l, lw, ll = _random_sequences(seed)
    ours_w, ours_l = w.clone().requires_grad_(True), l.clone().requires_grad_(True)
    ours = orpo_loss(ours_w, ours_l, lw, ll, beta).mean()
    theirs_w, theirs_l = w.clone().requires_grad_(True), l.clone().requires_grad_(True)
    theirs, metrics = _trl_orpo(beta, theirs_w, theirs_l, lw, ll)
    torch.testing.assert_close(ours, theirs.to(F64), **TOL)
    for a, b in zip(torch.autograd.grad(ours, [ours_w, ours_l]), torch.autograd.grad(theirs, [theirs_w, theirs_l])):
        torch.testing.assert_close(a, b.to(F64), **TOL)
    # the diagnostics log TRL's nll_loss and log_odds_chosen (the mean log odds ratio)
    diagnostics = get_method("orpo").diagnostics(PairBatch(w, lw, l, ll), beta=beta)
    assert diagnostics["nll"].item() == pytest.approx(metrics["nll_loss"], abs=1e-6)
    assert diagnostics["log_odds_ratio"].item() == pytest.approx(metrics["log_odds_chosen"], abs=1e-6)


def test_orpo_nll_reduction_is_trls_cross_entropy_over_the_chosen_response_tokens():
    """Fabricated logits: TRL's `get_batch_logps` gives the summed and averaged response log-probs, and
    `nn.CrossEntropyLoss` over the chosen rows with the prompt masked (-100) is the pooled NLL ORPO's
    batch mean carries. (TRL's own NLL also counts the prompt tokens: see docs/commands.md, Objectives.)"""
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(5)
    n, width, vocab, prompt = 3, 14, 9, 3
    lengths = torch.tensor([2, 7, 10, 5, 1, 8])
    logits = torch.randn(2 * n, width, vocab, generator=g, dtype=F64)
    labels = torch.randint(0, vocab, (2 * n, width), generator=g)
    pos = torch.arange(width)
    labels[(pos < prompt) | (pos >= prompt + lengths[:, None])] = -100
    summed = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
    averaged = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    nll = torch.nn.CrossEntropyLoss()(logits[:n, :-1].reshape(-1, vocab), labels[:n, 1:].reshape(-1))
    beta = 0.3
    ours = orpo_loss(summed[:n], summed[n:], lengths[:n].to(F64), lengths[n:].to(F64), beta).mean()
    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    odds_losses = ORPOTrainer.odds_ratio_loss(trainer, averaged[:n], averaged[n:])[0]
    torch.testing.assert_close(ours, (nll - odds_losses.mean()).to(F64), **TOL)


def test_orpo_finite_difference_gradient():
    w, l, lw, ll = _random_sequences(11, n=4)
    torch.autograd.gradcheck(lambda a, b: orpo_loss(a, b, lw, ll, 0.7), (w.requires_grad_(), l.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_is_finite_at_extreme_log_probs(dtype):
    w = t([-5000.0, 0.0, -1e-9, -3.0], dtype).requires_grad_()
    l = t([0.0, -5000.0, -2.0, -1e-12], dtype).requires_grad_()
    lengths = t([1.0, 1.0, 4.0, 2.0], dtype)
    loss = orpo_loss(w, l, lengths, lengths, 1.0)
    grads = torch.autograd.grad(loss.sum(), [w, l])
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)


# ==================================================================================================
# KTO
# ==================================================================================================

def test_kto_hand_values():
    logps, ref = [-3.0, -5.0, -4.0, -6.0], [-4.0, -5.0, -3.0, -8.0]  # r = 1, 0, −1, 2
    kl, kl_ref = [-2.0, -7.1, -3.0, -1.0], [-2.5, -7.0, -3.4, -1.2]  # log-ratios 0.5, −0.1, 0.4, 0.2: z = 0.25
    labels = [True, False, True, False]
    beta, dw, uw = 0.5, 1.5, 0.5
    z = 0.25
    expected = [dw * (1 - sigmoid(beta * (1 - z))), uw * (1 - sigmoid(beta * (z - 0))),
                dw * (1 - sigmoid(beta * (-1 - z))), uw * (1 - sigmoid(beta * (z - 2)))]
    got = kto_loss(t(logps), t(ref), t(kl), t(kl_ref), torch.tensor(labels), beta, dw, uw)
    torch.testing.assert_close(got, t(expected), rtol=1e-12, atol=1e-15)
    assert kto_reference_point(t(kl), t(kl_ref)).item() == pytest.approx(z, abs=1e-15)
    # a negative KL estimate is clamped to 0: then desirable 1 − σ(βr), undesirable 1 − σ(−βr)
    got = kto_loss(t(logps), t(ref), t(kl_ref), t(kl), torch.tensor(labels), beta)
    torch.testing.assert_close(got, t([1 - sigmoid(beta * r) if d else 1 - sigmoid(-beta * r)
                                       for r, d in zip([1, 0, -1, 2], labels)]), rtol=1e-12, atol=1e-15)


def test_kto_at_the_start_of_training_is_half_the_weights():
    """Policy = reference: r = 0 and z_ref = 0, so every example's loss is 0.5 × its class weight."""
    x = t([-3.0, -9.0, -1.0])
    got = kto_loss(x, x, x, x, torch.tensor([True, False, True]), 0.1, 2.0, 0.4)
    torch.testing.assert_close(got, t([1.0, 0.2, 1.0]), rtol=0, atol=0)


def _trl_kto(beta, dw, uw, logps, ref, kl, kl_ref, labels):
    """TRL's `KTOTrainer._compute_loss` on given per-sequence numbers: the model returns per-token
    log-probs whose sums are `logps`, `_compute_kl_logps` returns `kl`, the reference log-probs come
    precomputed (`ref_logps`, `ref_KL_logps`); the accelerator gathers over one process."""
    from trl.trainer.kto_trainer import KTOTrainer

    n, width = logps.shape[0], 4
    per_token = torch.cat([logps[:, None], torch.zeros(n, width - 1, dtype=logps.dtype)], dim=1)
    model = lambda **kwargs: SimpleNamespace(log_probs=per_token, entropy=torch.zeros(n, width),  # noqa: E731
                                             mean_logits=torch.zeros(n, width))
    trainer = object.__new__(KTOTrainer)
    trainer.__dict__.update(
        beta=beta, desirable_weight=dw, undesirable_weight=uw, loss_type="kto", calculate_KL=True,
        precompute_ref_logps=True, aux_loss_enabled=False, model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        _compute_kl_logps=lambda model, batch: kl)
    ones = torch.ones(n, width + 1, dtype=torch.long)
    inputs = {"input_ids": torch.zeros_like(ones), "attention_mask": ones, "completion_mask": ones, "label": labels,
              "ref_logps": ref, "ref_KL_logps": kl_ref}
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


@pytest.mark.parametrize("beta,dw,uw,seed", [(0.1, 1.0, 1.0, 0), (0.5, 1.33, 1.0, 1), (0.05, 1.0, 0.5, 2),
                                             (2.0, 1.0, 1.0, 3)])
@pytest.mark.parametrize("kl_shift", [1.5, -1.5])  # the KL estimate positive, or clamped to 0
def test_kto_matches_trl_loss_and_gradients(beta, dw, uw, seed, kl_shift):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(seed)
    n = 8
    logps = -torch.rand(n, generator=g, dtype=F64) * 40
    ref = logps + torch.randn(n, generator=g, dtype=F64) * 3
    kl_ref = -torch.rand(n, generator=g, dtype=F64) * 40
    kl = kl_ref + torch.randn(n, generator=g, dtype=F64) + kl_shift
    labels = torch.rand(n, generator=g) < 0.5
    labels[:2] = torch.tensor([True, False])  # both classes
    ours_logps, theirs_logps = logps.clone().requires_grad_(True), logps.clone().requires_grad_(True)
    ours = kto_loss(ours_logps, ref, kl, kl_ref, labels, beta, dw, uw).mean()
    theirs, metrics = _trl_kto(beta, dw, uw, theirs_logps, ref, kl, kl_ref, labels)
    torch.testing.assert_close(ours, theirs, **TOL)
    (a,), (b,) = torch.autograd.grad(ours, [ours_logps]), torch.autograd.grad(theirs, [theirs_logps])
    torch.testing.assert_close(a, b, **TOL)
    batch = PairBatch(chosen_logps=logps, chosen_lengths=torch.ones(n), rejected_logps=kl, ref_chosen_logps=ref,
                      ref_rejected_logps=kl_ref, labels=labels)
    diagnostics = get_method("kto").diagnostics(batch, beta=beta, desirable_weight=dw, undesirable_weight=uw)
    assert diagnostics["kl"].item() == pytest.approx(metrics["kl"][0], abs=1e-6)


@pytest.mark.parametrize("label", [True, False])
def test_kto_matches_trl_on_a_batch_of_one_class(label):
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(9)
    logps, ref, kl, kl_ref = (-torch.rand(5, generator=g, dtype=F64) * 20 for _ in range(4))
    labels = torch.full((5,), label)
    ours = kto_loss(logps, ref, kl, kl_ref, labels, 0.3, 1.2, 0.8).mean()
    torch.testing.assert_close(ours, _trl_kto(0.3, 1.2, 0.8, logps, ref, kl, kl_ref, labels)[0], **TOL)


def test_kto_finite_difference_gradient_and_no_gradient_through_the_kl_estimate():
    g = torch.Generator().manual_seed(4)
    logps, ref, kl, kl_ref = (-torch.rand(6, generator=g, dtype=F64) * 10 for _ in range(4))
    kl = kl + 2  # z_ref > 0
    labels = torch.tensor([True, False, True, True, False, False])
    torch.autograd.gradcheck(lambda x: kto_loss(x, ref, kl, kl_ref, labels, 0.8, 1.3, 0.6),
                             (logps.clone().requires_grad_(),))
    kl_leaf = kl.clone().requires_grad_(True)
    loss = kto_loss(logps.clone().requires_grad_(), ref, kl_leaf, kl_ref, labels, 0.8).sum()
    loss.backward()
    assert kl_leaf.grad is None  # z_ref is a detached estimate, as in the paper and TRL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kto_is_finite_at_extreme_log_probs(dtype):
    logps = t([-5000.0, 0.0, -5000.0, -1.0], dtype).requires_grad_()
    ref = t([0.0, -5000.0, -1.0, -5000.0], dtype)
    labels = torch.tensor([True, True, False, False])
    loss = kto_loss(logps, ref, ref, logps.detach(), labels, 10.0)
    (grad,) = torch.autograd.grad(loss.sum(), [logps])
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


# ==================================================================================================
# The registry
# ==================================================================================================

def test_registry_entries():
    orpo, kto = get_method("orpo"), get_method("kto")
    assert not orpo.uses_reference and orpo.uses_rejected and not orpo.unpaired and not orpo.uses_rewards
    assert kto.uses_reference and kto.uses_rejected and kto.unpaired and not kto.uses_rewards
    assert orpo.resolve({}) == {"beta": 0.1}
    assert kto.resolve({}) == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert kto.resolve({"desirable_weight": "1.33"})["desirable_weight"] == 1.33
    for method, params in (("orpo", {"beta": -0.1}), ("kto", {"beta": 0.0}), ("kto", {"undesirable_weight": -1})):
        with pytest.raises(Exception, match=list(params)[0]):
            get_method(method).resolve(params)


def test_registry_batch_losses_are_the_means():
    w, l, lw, ll = _random_sequences(2, n=4)
    batch = PairBatch(w, lw, l, ll, ref_chosen_logps=w + 1, ref_rejected_logps=l - 0.5,
                      labels=torch.tensor([True, False, False, True]))
    orpo, kto = get_method("orpo"), get_method("kto")
    torch.testing.assert_close(orpo.batch_loss(batch, **orpo.resolve({"beta": 0.4})),
                               orpo_loss(w, l, lw, ll, 0.4).mean())
    torch.testing.assert_close(kto.batch_loss(batch, **kto.resolve({"undesirable_weight": 2.0})),
                               kto_loss(w, w + 1, l, l - 0.5, batch.labels, 0.1, 1.0, 2.0).mean())


# ==================================================================================================
# Training through `alignlab train` on the tiny Llama
# ==================================================================================================

def _train(method: str, model, data, out, *settings: str) -> list[dict]:
    args = ["train", "--method", method, "--model", str(model), "--data", str(data), "--out", str(out),
            "--max_length", "64", "--max_prompt_length", "32", "--learning_rate", "5e-3", "--warmup_ratio", "0",
            "--lr_scheduler", "constant", "--logging_steps", "1", *settings]
    assert main(args) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kto_trains_on_unpaired_records_and_starts_at_half_the_weights(tiny_model, tmp_path):
    from conftest import COLORS, THINGS

    records = [{"prompt": f"What color is the {THINGS[i % 8]} number {i}?",
                "completion": f"The {THINGS[i % 8]} is {COLORS[i % 8]}." if i < 8 else "I will not say.",
                "label": i < 8} for i in range(12)]
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    # One micro-batch of all 12 examples per step: at step 1 policy = reference, so r = 0 and z_ref = 0.
    metrics = _train("kto", tiny_model, data, tmp_path / "run", "--batch_size", "12", "--epochs", "4",
                     "--desirable_weight", "2.0", "--undesirable_weight", "0.5")
    assert metrics[0]["loss"] == pytest.approx(0.5 * (8 * 2.0 + 4 * 0.5) / 12, abs=1e-6)
    assert metrics[0]["margin"] == pytest.approx(0.0, abs=1e-6) and metrics[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["margin"] > 0
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["params"] == {"beta": 0.1, "desirable_weight": 2.0, "undesirable_weight": 0.5}
    assert "kept 12 labelled examples (8 desirable, 4 undesirable)" in summary["data"]
    assert summary["reference_cache_hit"] is False


def test_kto_trains_on_preference_pairs_unpaired(tiny_model, pairs_file, tmp_path):
    metrics = _train("kto", tiny_model, pairs_file, tmp_path / "run", "--batch_size", "32", "--epochs", "2")
    assert metrics[0]["loss"] == pytest.approx(0.5, abs=1e-6)  # 16 desirable + 16 undesirable, weights 1
    assert metrics[0]["pairs_seen"] == 32 and metrics[0]["responses_seen"] == 32  # the KL completion trains nothing
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert "kept 32 labelled examples (16 desirable, 16 undesirable) from 16 preference pairs" in summary["data"]


def _orpo_loss_by_hand(model_path, pairs_file, beta: float) -> float:
    """ORPO's loss over all pairs from the model's own log-probs, one unpadded sequence at a time in float64."""
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_causal_lm, load_tokenizer

    examples, _ = tokenize_pairs(load_tokenizer(str(model_path)), load_pairs(str(pairs_file)).pairs, 64, 32)
    model = load_causal_lm(str(model_path)).eval().double()
    sums = {"chosen": [], "rejected": []}
    with torch.no_grad():
        for ex in examples:
            for side, response in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
                ids = torch.tensor([ex.prompt_ids + response])
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
                sums[side].append(sum(logprobs[i - 1, ids[0, i]].item() for i in range(len(ex.prompt_ids), ids.shape[1])))
    lengths = {"chosen": [len(ex.chosen_ids) for ex in examples], "rejected": [len(ex.rejected_ids) for ex in examples]}
    nll = -sum(sums["chosen"]) / sum(lengths["chosen"])
    odds = [math.log(sigmoid(log_odds(w / a) - log_odds(r / b)))
            for w, a, r, b in zip(sums["chosen"], lengths["chosen"], sums["rejected"], lengths["rejected"])]
    return nll - beta * sum(odds) / len(odds)


def test_orpo_trains_without_any_reference_pass(tiny_model, pairs_file, tmp_path, monkeypatch):
    from alignlab.training import inputs, offline

    def no_reference(*args, **kwargs):
        raise AssertionError("ORPO is reference-free: no reference log-probs")

    for module in (offline, inputs):
        monkeypatch.setattr(module, "reference_logps", no_reference)
    monkeypatch.setattr(inputs, "compute_sequence_logps", no_reference)
    metrics = _train("orpo", tiny_model, pairs_file, tmp_path / "run", "--batch_size", "16", "--epochs", "5",
                     "--beta", "0.5", "--cache_dir", str(tmp_path / "cache"))
    # step 1 trains the untrained model on all 16 pairs: its loss from the model's own log-probs
    assert metrics[0]["loss"] == pytest.approx(_orpo_loss_by_hand(tiny_model, pairs_file, 0.5), rel=1e-4)
    assert metrics[-1]["loss"] < metrics[0]["loss"], [m["loss"] for m in metrics]
    assert metrics[-1]["log_odds_ratio"] > metrics[0]["log_odds_ratio"]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["reference_cache_hit"] is None
    assert not list((tmp_path / "cache").glob("reference-logps*"))


def test_a_study_grid_runs_kto_and_orpo_on_the_worlds_pairs(tiny_model, tmp_path):
    """The study path: the grid expands kto and orpo like any method, the sweep's TrainConfigs validate,
    and KTO trains on the study world's preference pairs (unpaired) as a sweep's run would."""
    from alignlab.config import TrainConfig
    from alignlab.data.pairs import write_pairs_jsonl
    from alignlab.study.config import StudyConfig
    from alignlab.study.grid import expand_grid
    from alignlab.training import train
    from alignlab.world import build_world, world_config

    world = build_world(world_config("tiny", seed=0))
    data = tmp_path / "train.jsonl"
    write_pairs_jsonl(world.train_pairs[:24], data)
    study = StudyConfig(methods=["kto", "orpo"], seeds=2, grid={"kto": {"beta": [0.1, 0.3]}})
    base = {"learning_rate": 5e-3, "epochs": 1, "batch_size": 8, "max_length": 64, "max_prompt_length": 32,
            "max_steps": 2}
    runs = expand_grid(study, base)
    assert sorted(run.name for run in runs) == ["kto-beta0.1-lr0.005-s0", "kto-beta0.1-lr0.005-s1",
                                                "kto-beta0.3-lr0.005-s0", "kto-beta0.3-lr0.005-s1",
                                                "orpo-lr0.005-s0", "orpo-lr0.005-s1"]
    configs = [TrainConfig(method=run.method, model=str(tiny_model), data=str(data), out=str(tmp_path / run.name),
                           params=run.params, **{**base, **run.training}) for run in runs]
    for config in configs:
        config.validate()
    first = train(configs[0])
    # The study trains each configuration on seeds of its own (alignlab.study.grid.configuration_seed).
    assert runs[2].params["beta"] == 0.3 and runs[2].training["seed"] != runs[0].training["seed"]
    # Another beta on the first one's seed: the same 16 examples drawn, with the same KL completions, so cached.
    second = train(dataclasses.replace(configs[2], seed=configs[0].seed))
    assert (first.optimizer_steps, first.pairs_trained) == (2, 16)
    assert first.reference_cache_hit is False and second.reference_cache_hit is True
    summary = json.loads((tmp_path / runs[0].name / "train_summary.json").read_text())
    assert "kept 48 labelled examples (24 desirable, 24 undesirable) from 24 preference pairs" in summary["data"]
