"""`alignlab bench --shape hh`: real-shaped pairs (multi-turn HH-RLHF transcripts) on a BPE tokenizer
trained on them, and only pairs both libraries tokenise untruncated."""

import gzip
import json

import pytest

from alignlab.bench.setups import SHAPES, prepare_hh
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_causal_lm, load_tokenizer

TURNS = ["how do I bake bread at home", "is it hard to knead dough by hand", "what flour works best for it"]


def transcript(turns: int, answer: str) -> str:
    text = "".join(f"\n\nHuman: {TURNS[t % 3]}\n\nAssistant: it depends on the oven" for t in range(turns - 1))
    return text + f"\n\nHuman: {TURNS[(turns - 1) % 3]}\n\nAssistant: {answer}"


def write_hh(path, rows):
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_hh_setup_trains_a_bpe_tokenizer_and_takes_only_untruncated_pairs(tmp_path):
    rows = [{"chosen": transcript(1 + i % 3, "use bread flour " * (1 + i % 4)),
             "rejected": transcript(1 + i % 3, "no idea")} for i in range(12)]
    rows.insert(2, {"chosen": transcript(2, "flour " * 400), "rejected": transcript(2, "no")})  # too long
    size = dict(SHAPES["hh"]["quick"], pairs=6, hidden_size=32, layers=1, heads=2, max_length=128)
    setup = prepare_hh(tmp_path, size, write_hh(tmp_path / "hh.jsonl.gz", rows), "hh-rlhf")
    taken = [json.loads(line) for line in open(setup["data"])]
    assert len(taken) == 6 and setup["max_length"] == 128
    assert [p["id"] for p in taken] == ["hh-1", "hh-2", "hh-4", "hh-5", "hh-6", "hh-7"]  # hh-3, too long, is skipped
    assert max(len(p["prompt"]) for p in taken) == 5  # multi-turn prompts: user, assistant, ... user
    tokenizer = load_tokenizer(setup["model"])
    assert "<|assistant|>" in tokenizer.get_vocab() and tokenizer.chat_template
    ids = tokenizer("knead the dough")["input_ids"]
    assert len(ids) < len("knead the dough") and tokenizer.decode(ids) == "knead the dough"  # BPE, lossless
    model = load_causal_lm(setup["model"])
    assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)


def test_the_full_hh_model_has_the_documented_size(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    size = SHAPES["hh"]["full"]
    config = LlamaConfig(vocab_size=8192, hidden_size=size["hidden_size"], intermediate_size=2 * size["hidden_size"],
                         num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                         num_key_value_heads=size["heads"] // 2, tie_word_embeddings=False)
    assert 20e6 <= LlamaForCausalLM(config).num_parameters() <= 30e6  # "~20–30M parameters"


def test_hh_without_its_file_names_the_missing_path_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AlignlabError, match=r"hh-rlhf/harmless-base/test.jsonl.gz is not there.*--data FILE"):
        prepare_hh(tmp_path, SHAPES["hh"]["quick"], None, "hh-rlhf")


def test_the_hh_table_holds_the_precomputed_row_to_its_own_target():
    from alignlab.bench.table import format_table

    results = {"shape": "hh", "ratios": {"dpo_vs_trl": 2.4, "dpo_vs_trl_precomputed": 1.4}, "absolute": {}}
    table = format_table(results)
    assert "dpo_vs_trl_precomputed           1.40  >= 1.5   NO" in table
    assert "dpo_vs_trl                       2.40  >= 2.0   yes" in table
    assert "dpo_vs_trl_precomputed           1.40  >= 1.3   yes" in format_table({**results, "shape": "tiny"})


def test_the_scaling_table_shows_seconds_per_thousand_pairs_and_the_ratio():
    from alignlab.bench.scaling import format_scaling

    row = lambda n, ours, theirs: {"pairs": n, "alignlab": {"seconds": ours, "tokens": 250 * n},
                                   "trl": {"seconds": theirs, "tokens": 250 * n}}
    table = format_scaling({"rows": [row(512, 80.0, 320.0), row(2048, 330.0, 1300.0)]})
    first, second = table.splitlines()[1:]
    assert first.split() == ["512", "128000", "80.0", "1,600", "156.2", "320.0", "400", "625.0", "4.00"]
    assert second.split() == ["2048", "512000", "330.0", "1,552", "161.1", "1300.0", "394", "634.8", "3.94"]


@pytest.mark.parametrize("flags,message", [(["--scaling", "512,lots"], "pair counts separated by commas"),
                                           (["--scaling", "512,0"], "--scaling"),
                                           (["--scaling", "512", "--pairs", "8"], "drop --model and --pairs"),
                                           (["--shape", "hh", "--model", "m"], "--model runs the DPO-vs-TRL rows")])
def test_bench_refuses_flag_combinations_it_cannot_honour(flags, message, capsys):
    from alignlab.cli import main

    assert main(["bench", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cycled_pairs_repeat_the_fitting_ones_in_order_up_to_the_count(tmp_path):
    from alignlab.bench.setups import untruncated_pairs
    from alignlab.data.pairs import load_pairs

    rows = [{"chosen": transcript(1, "yes " * (1 + i)), "rejected": transcript(1, "no")} for i in range(3)]
    rows.append({"chosen": transcript(1, "flour " * 400), "rejected": transcript(1, "no")})  # never fits
    source = write_hh(tmp_path / "hh.jsonl.gz", rows)
    size = dict(SHAPES["hh"]["quick"], pairs=3, hidden_size=32, layers=1, heads=2, max_length=128)
    model = prepare_hh(tmp_path, size, source, "hh-rlhf")["model"]
    pairs = load_pairs(source, "hh-rlhf").pairs
    taken = untruncated_pairs(model, pairs, 8, 128, source, cycle=True)
    assert [p["id"] for p in taken] == ["hh-1", "hh-2", "hh-3", "hh-1#1", "hh-2#1", "hh-3#1", "hh-1#2", "hh-2#2"]
    assert [p["chosen"] for p in taken[3:6]] == [p["chosen"] for p in taken[:3]]
    with pytest.raises(AlignlabError, match="only 3 of 4 pairs fit 128 tokens"):
        untruncated_pairs(model, pairs, 8, 128, source)
