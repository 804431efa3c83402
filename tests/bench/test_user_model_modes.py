"""`alignlab bench --model`: full-parameter and LoRA rows against TRL with the same adapter, each to
its target, and `--quick` sized from timed warm-ups to the 5-minute budget."""

import pytest

from alignlab.bench.runner import Measurement, check_equal_work
from alignlab.bench.table import format_table
from alignlab.bench.sizing import Probe, describe, quick_pairs


def test_quick_pairs_are_the_most_whole_steps_whose_predicted_runs_fit():
    # alignlab: 40 s process, 30 s timed on 4 pairs (7.5 s/pair); TRL: 60 s, 50 s (12.5 s/pair); two modes.
    probes = [Probe("alignlab", 40.0, 30.0, 4), Probe("TRL", 60.0, 50.0, 4)]
    # 8 pairs: 2 × ((40 + 4·7.5) + (60 + 4·12.5)) = 360 s; 12 pairs: 2 × ((40 + 8·7.5) + (60 + 8·12.5)) = 520 s.
    assert quick_pairs(probes, 370.0, 4, 256, runs_per_probe=2) == 8
    assert quick_pairs(probes, 359.0, 4, 256, runs_per_probe=2) == 4
    assert quick_pairs(probes, 520.0, 4, 256, runs_per_probe=2) == 12
    assert quick_pairs(probes, 180.0, 4, 256, runs_per_probe=1) == 8  # one mode: 180 s exactly
    assert quick_pairs(probes, 10.0, 4, 256, runs_per_probe=2) == 4  # never under one step
    assert quick_pairs(probes, 1e9, 4, 30, runs_per_probe=2) == 28  # never past the pairs prepared


def test_the_quick_size_is_explained_and_an_overrun_is_said():
    probes = [Probe("alignlab", 40.0, 30.0, 4), Probe("TRL", 60.0, 50.0, 4)]
    line = describe(probes, 8, 370.0, 4, runs_per_probe=2)
    assert "alignlab 40 s, TRL 60 s" in line and "8 pairs (2 steps)" in line and "predicted 360 s: fits" in line
    assert "does NOT fit" in describe(probes, 4, 150.0, 4, runs_per_probe=2)  # 200 s at one step


def test_the_model_table_holds_both_modes_to_their_targets():
    results = {"model": "m.gguf", "modes": ["full", "lora"], "absolute": {},
               "ratios": {"dpo_vs_trl": 2.7, "peak_mem_vs_trl": 0.86, "lora_dpo_vs_trl": 2.4,
                          "lora_peak_mem_vs_trl": 0.55}}
    lines = [line.rstrip() for line in format_table(results).splitlines()]
    assert "dpo_vs_trl                       2.70  >= 2.5   yes" in lines
    assert "peak_mem_vs_trl                  0.86  <= 0.6   NO" in lines
    assert "lora_dpo_vs_trl                  2.40  >= 2.5   NO" in lines
    assert "lora_peak_mem_vs_trl             0.55  <= 0.6   yes" in lines
    assert "lora_dpo_vs_trl_precomputed       n/a  >= 1.3" in lines
    assert not any(line.startswith(("dpo_vs_sft", "sweep_vs_independent")) for line in lines)
    lora_only = format_table({**results, "modes": ["lora"]})
    assert "lora_dpo_vs_trl " in lora_only and "\ndpo_vs_trl " not in lora_only


def test_the_tiny_shape_is_a_regression_row_at_one_and_a_half():
    table = format_table({"shape": "tiny", "ratios": {"dpo_vs_trl": 1.6}, "absolute": {}})
    assert "dpo_vs_trl                       1.60  >= 1.5   yes" in table


def test_equal_work_covers_the_saved_parameters():
    ours = Measurement(10.0, 8, 900, 2, 4, 100.0, saved_parameters=1000)
    check_equal_work(ours, Measurement(30.0, 8, 900, 2, 4, 150.0, saved_parameters=1000), ("a", "b"))
    with pytest.raises(RuntimeError, match="unequal work: a saved_parameters=1000 but b saved_parameters=1200"):
        check_equal_work(ours, Measurement(30.0, 8, 900, 2, 4, 150.0, saved_parameters=1200), ("a", "b"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from alignlab.bench.setups import bench_pairs
    from alignlab.models.tiny import build_tiny_llama

    rows = bench_pairs(16)
    return str(build_tiny_llama(tmp_path_factory.mktemp("lora-bench"),
                                [text for p in rows for text in (p["prompt"], p["chosen"], p["rejected"])],
                                hidden_size=32, layers=1, heads=2, chat_template=True, word_level=True,
                                max_positions=256))


def test_trl_gets_alignlabs_default_adapter_with_trls_rank_alpha_and_dropout(tiny_model, tmp_path):
    from trl import ModelConfig

    from alignlab.bench.runner import trl_peft_config
    from alignlab.models.loading import load_causal_lm

    model = load_causal_lm(tiny_model)
    setup = {"model": tiny_model, "data": "pairs.jsonl", "batch_size": 4, "max_length": 256}
    assert trl_peft_config(setup, model, tmp_path) is None
    adapter = trl_peft_config({**setup, "use_peft": True}, model, tmp_path)
    defaults = ModelConfig()
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout) == (defaults.lora_r, defaults.lora_alpha,
                                                                     defaults.lora_dropout)
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if type(module).__name__ == "Linear" and name != "lm_head"}
    targets = adapter.target_modules
    assert targets == "all-linear" or set(targets) == linear == {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"}


@pytest.mark.slow
def test_the_lora_rows_train_the_same_adapter_on_both_sides(tiny_model):
    from alignlab.bench.setups import USER_MODEL_QUICK_BATCH
    from alignlab.bench.user_model import run_model_bench
    from alignlab.models.loading import load_causal_lm

    results = run_model_bench(None, quick=True, device="cpu", model=tiny_model, progress=lambda line: None, pairs=8,
                              use_peft=True)
    assert set(results["ratios"]) == {"lora_dpo_vs_trl", "lora_peak_mem_vs_trl"}
    ours, theirs = results["absolute"]["lora_alignlab_dpo"], results["absolute"]["lora_trl_dpo"]
    # r · (inputs + outputs) per adapted linear layer, every one but the output head: TRL's default rank.
    rank = 16
    expected = sum(rank * (module.in_features + module.out_features) for name, module in
                   load_causal_lm(tiny_model).named_modules() if type(module).__name__ == "Linear" and name != "lm_head")
    assert ours["saved_parameters"] == theirs["saved_parameters"] == expected
    assert (ours["pairs"], ours["optimizer_steps"], ours["batch_size"]) == (8, 8 // USER_MODEL_QUICK_BATCH,
                                                                           USER_MODEL_QUICK_BATCH)
    assert "padding_free" in results["notes"] and "dpo_trainer.py" in results["notes"]["padding_free"]


def scripted_workers(monkeypatch, seconds: dict):
    """Workers that return at once with scripted seconds per (kind, use_peft) and record each call."""
    import alignlab.bench.runner as runner
    import alignlab.bench.user_model as user_model
    from alignlab.bench.setups import token_counts

    calls = []

    def worker(kind, setup, device, **extra):
        calls.append((kind, setup.get("use_peft", False), extra.get("precompute")))
        if kind == "matmul":
            return {"flops_per_second": 1e9}
        counts = token_counts(setup)
        return {"seconds": seconds[kind, setup.get("use_peft", False)], "pairs": counts["pairs"],
                "tokens": counts["forwarded"], "optimizer_steps": counts["pairs"] // setup["batch_size"],
                "batch_size": setup["batch_size"], "peak_memory_mb": 100.0, "saved_parameters": 7}

    for module in (runner, user_model):
        monkeypatch.setattr(module, "run_worker", worker)
    return calls


SCRIPTED = {("alignlab-dpo", False): 10.0, ("trl-dpo", False): 30.0, ("alignlab-dpo", True): 8.0,
            ("trl-dpo", True): 20.0}


def test_with_no_room_past_the_warm_ups_they_are_the_first_modes_rows(tiny_model, monkeypatch):
    import alignlab.bench.user_model as user_model
    from alignlab.bench.setups import USER_MODEL_QUICK_BATCH

    calls = scripted_workers(monkeypatch, SCRIPTED)
    monkeypatch.setattr(user_model, "QUICK_BUDGET_SECONDS", 0)  # nothing left after the warm-ups
    lines = []
    results = user_model.run_model_bench(None, quick=True, device="cpu", model=tiny_model, progress=lines.append)
    assert [c for c in calls if c[0] != "matmul"] == [("alignlab-dpo", False, None), ("trl-dpo", False, False),
                                                      ("alignlab-dpo", True, None), ("trl-dpo", True, False)]
    assert results["ratios"]["dpo_vs_trl"] == pytest.approx(3.0) and results["ratios"]["lora_dpo_vs_trl"] == 2.5
    assert results["pairs"] == USER_MODEL_QUICK_BATCH and "warm-ups" in results["notes"]["warm_ups"]
    assert "1 run(s) per side" in lines[0] and "does NOT fit" in lines[0]


def test_with_room_for_one_step_each_mode_runs_again_on_the_warm_ups_pairs(tiny_model, monkeypatch):
    """A run per side and mode on the warm-ups' own pairs fits, a second step does not (10 s per pair
    over both modes: 80 s a step): each mode runs again, so that no row is a warm-up (alignlab's ran
    first, on colder caches)."""
    import alignlab.bench.user_model as user_model
    from alignlab.bench.setups import USER_MODEL_QUICK_BATCH
    from alignlab.bench.sizing import CLOSING_SECONDS

    calls = scripted_workers(monkeypatch, SCRIPTED)
    monkeypatch.setattr(user_model, "QUICK_BUDGET_SECONDS", CLOSING_SECONDS + 60)
    lines = []
    results = user_model.run_model_bench(None, quick=True, device="cpu", model=tiny_model, progress=lines.append)
    runs = [c for c in calls if c[0] != "matmul"]
    assert runs[2:] == [("alignlab-dpo", False, None), ("trl-dpo", False, False), ("alignlab-dpo", True, None),
                        ("trl-dpo", True, False)]
    assert results["pairs"] == USER_MODEL_QUICK_BATCH and "warm_ups" not in results["notes"]
    assert "2 run(s) per side" in lines[0] and ": fits" in lines[0]


def test_with_room_each_mode_runs_again_on_the_chosen_pairs(tiny_model, monkeypatch):
    import alignlab.bench.user_model as user_model
    from alignlab.bench.setups import USER_MODEL_QUICK_BATCH

    calls = scripted_workers(monkeypatch, SCRIPTED)
    results = user_model.run_model_bench(None, quick=True, device="cpu", model=tiny_model, progress=lambda _: None)
    runs = [c for c in calls if c[0] != "matmul"]
    assert runs[:2] == [("alignlab-dpo", False, None), ("trl-dpo", False, False)]  # the timed warm-ups
    assert runs[2:] == [("alignlab-dpo", False, None), ("trl-dpo", False, False), ("alignlab-dpo", True, None),
                        ("trl-dpo", True, False)]  # one run per side and mode, no precomputed variant
    assert results["pairs"] > USER_MODEL_QUICK_BATCH and "warm_ups" not in results["notes"]
    assert "dpo_vs_trl_precomputed" in results["notes"] and "lora_dpo_vs_trl_precomputed" not in results["ratios"]
