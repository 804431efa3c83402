"""TRL 1.16's length settings: alignlab's token ids against TRL's own tokenisation and truncation.

TRL's DPOTrainer tokenises a pair untruncated (and, with `keep_start`, drops the pairs whose prompt
alone fills `max_length`); its `DataCollatorForPreference` then cuts each sequence, prompt + chosen
and prompt + rejected, to `max_length` by itself. alignlab cuts once, at tokenisation, with one prompt
per pair (see `alignlab.data.tokenise.truncate_pair` for where that differs, and why).
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.config import TrainConfig
from alignlab.data import tokenise
from alignlab.data.pairs import PreferencePair, load_pairs
from alignlab.data.tokenise import LengthLimits, TokenizedPair, TruncationReport, tokenize_pairs, truncate_pair
from alignlab.errors import AlignlabError
from alignlab.models.loading import load_tokenizer
from conftest import config_for, make_pairs

MULTI_TURN = [{"role": "user", "content": "What color is the apple number 3?"},
              {"role": "assistant", "content": "The apple is red."},
              {"role": "user", "content": "What color is the sky number 5?"}]
PAIRS = [
    PreferencePair(id="long-prompt", prompt=MULTI_TURN, chosen="The sky is blue.", rejected="I do not know."),
    PreferencePair(id="long-chosen", prompt=[{"role": "user", "content": "What color is the leaf?"}],
                   chosen="The leaf is green, and the plum is purple, and the coal is black, and the snow is white.",
                   rejected="I will not guess."),
    PreferencePair(id="long-rejected", prompt=[{"role": "user", "content": "What color is the banana number 7?"}],
                   chosen="The banana is yellow.",
                   rejected="I do not know, and I will not guess anything about it at all, not at all."),
    PreferencePair(id="even", prompt=[{"role": "user", "content": "What color is the coal?"}],
                   chosen="The coal is black.", rejected="The coal is white."),
]


@pytest.fixture(scope="module")
def trl_side(tiny_chat_model, tmp_path_factory):
    """TRL's preparation of PAIRS for (max_length, truncation_mode): for each pair, None where TRL drops
    it, else its (chosen, rejected) sequences as (ids, completion mask) out of TRL's own collator."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer = load_tokenizer(str(tiny_chat_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_model))
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                                  "rejected": [{"role": "assistant", "content": p.rejected}], "index": i}
                                 for i, p in enumerate(PAIRS)])
    out = tmp_path_factory.mktemp("trl")

    def prepare(max_length, truncation_mode="keep_start"):
        args = DPOConfig(output_dir=str(out), use_cpu=True, max_length=max_length, truncation_mode=truncation_mode,
                         report_to=[], save_strategy="no", disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        kept = {row["index"]: row for row in trainer.train_dataset}
        prepared = []
        for i in range(len(PAIRS)):
            if i not in kept:
                prepared.append(None)
                continue
            parts = {key: kept[i][key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
            batch = trainer.data_collator([parts])
            rows = []
            for row in range(2):
                n = int(batch["attention_mask"][row].sum())
                rows.append((batch["input_ids"][row, :n].tolist(), batch["completion_mask"][row, :n].tolist()))
            prepared.append((parts, rows))
        return prepared

    return tokenizer, prepare


def scored(row: list[int], mask: list[int]) -> list[int]:
    """The completion tokens TRL learns from: those its loss counts, from position 1 on (the labels shift)."""
    return [token for j, token in enumerate(row) if j > 0 and mask[j]]


def test_untruncated_ids_are_trls(trl_side):
    tokenizer, prepare = trl_side
    ours, report = tokenize_pairs(tokenizer, PAIRS, None)
    for mine, (theirs, _) in zip(ours, prepare(None)):
        assert (mine.prompt_ids, mine.chosen_ids, mine.rejected_ids) == (
            theirs["prompt_ids"], theirs["chosen_ids"], theirs["rejected_ids"])
    assert report.pairs_truncated == 0


@pytest.mark.parametrize("max_length", [6, 12, 17, 24, 40])
def test_keep_start_ids_are_trls_and_the_pairs_trl_drops_are_counted(trl_side, max_length):
    tokenizer, prepare = trl_side
    whole, _ = tokenize_pairs(tokenizer, PAIRS, None)
    ours, report = tokenize_pairs(tokenizer, PAIRS, max_length, truncation_mode="keep_start")
    trl = prepare(max_length, "keep_start")
    assert report.prompts_filling == sum(t is None for t in trl)
    for full, mine, theirs in zip(whole, ours, trl):
        if theirs is None:  # TRL drops it: kept here, the prompt's end and each response's first token
            assert len(full.prompt_ids) >= max_length
            assert mine == TokenizedPair(full.prompt_ids[-(max_length - 1):], full.chosen_ids[:1],
                                         full.rejected_ids[:1])
            continue
        for response, (row, mask) in zip((mine.chosen_ids, mine.rejected_ids), theirs[1]):
            assert mine.prompt_ids + response == row
            assert mask == [0] * len(mine.prompt_ids) + [1] * len(response)


@pytest.mark.parametrize("max_length", [6, 12, 17, 24, 40])
def test_keep_end_learns_from_trls_tokens_and_the_longer_sequence_is_trls(trl_side, max_length):
    tokenizer, prepare = trl_side
    whole, _ = tokenize_pairs(tokenizer, PAIRS, None)
    ours, report = tokenize_pairs(tokenizer, PAIRS, max_length, truncation_mode="keep_end")
    trl = prepare(max_length, "keep_end")
    assert None not in trl and report.prompts_filling == 0  # keep_end drops nothing, in TRL as here
    for full, mine, theirs in zip(whole, ours, trl):
        longest = max(len(full.chosen_ids), len(full.rejected_ids))
        for response, full_response, (row, mask) in zip((mine.chosen_ids, mine.rejected_ids),
                                                        (full.chosen_ids, full.rejected_ids), theirs[1]):
            assert response == scored(row, mask)
            ours_row = mine.prompt_ids + response
            if mask[0] == 0:  # TRL's row still has a prompt: ours is its end
                assert row[len(row) - len(ours_row):] == ours_row
            if len(full_response) == longest < max_length:
                assert ours_row == row


def test_keep_start_with_a_prompt_longer_than_max_length_keeps_its_end_and_counts_it():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    prompt, chosen, rejected = list(range(1, 11)), [11, 12, 13], [21]
    pair, cuts = truncate_pair(prompt, chosen, rejected, LengthLimits(6, truncation_mode="keep_start"))
    assert pair == TokenizedPair([6, 7, 8, 9, 10], [11], [21])
    assert cuts == (True, 1, True)
    # TRL drops this pair (its filter keeps len(prompt_ids) < max_length); one token shorter, it is TRL's
    pair, cuts = truncate_pair(prompt[:5], chosen, rejected, LengthLimits(6, truncation_mode="keep_start"))
    trl = DataCollatorForPreference(pad_token_id=0, max_length=6, truncation_mode="keep_start")(
        [{"prompt_ids": prompt[:5], "chosen_ids": chosen, "rejected_ids": rejected}])
    assert trl["input_ids"][0].tolist() == pair.prompt_ids + pair.chosen_ids == [1, 2, 3, 4, 5, 11]
    assert cuts == (False, 1, False)


def test_keep_end_with_a_prompt_longer_than_max_length_cuts_the_prompt_first():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    prompt, chosen, rejected = list(range(1, 11)), [11, 12, 13], [21]
    pair, cuts = truncate_pair(prompt, chosen, rejected, LengthLimits(6, truncation_mode="keep_end"))
    assert pair == TokenizedPair([8, 9, 10], [11, 12, 13], [21])  # room for the longer response
    assert cuts == (True, 0, False)
    trl = DataCollatorForPreference(pad_token_id=0, max_length=6, truncation_mode="keep_end")(
        [{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}])
    assert trl["input_ids"][0].tolist() == [8, 9, 10, 11, 12, 13]  # the longer sequence: TRL's
    assert trl["input_ids"][1].tolist() == [6, 7, 8, 9, 10, 21]  # TRL gives the shorter one more prompt


def test_keep_end_with_a_response_longer_than_max_length_keeps_the_tokens_trl_learns_from():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    prompt, chosen, rejected = [1, 2, 3], list(range(11, 21)), [21]
    pair, cuts = truncate_pair(prompt, chosen, rejected, LengthLimits(5, truncation_mode="keep_end"))
    assert pair == TokenizedPair([3], [17, 18, 19, 20], [21])
    assert cuts == (True, 1, False)
    trl = DataCollatorForPreference(pad_token_id=0, max_length=5, truncation_mode="keep_end")(
        [{"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}])
    assert trl["input_ids"][0].tolist() == [16, 17, 18, 19, 20]  # no prompt left; 16 predicts nothing
    assert scored(trl["input_ids"][0].tolist(), trl["completion_mask"][0].tolist()) == pair.chosen_ids


def test_completion_cap_keeps_a_responses_start_and_prompt_cap_a_prompts_end():
    prompt, chosen, rejected = list(range(1, 9)), list(range(11, 19)), [21, 22]
    for mode in ("keep_start", "keep_end"):
        pair, cuts = truncate_pair(prompt, chosen, rejected, LengthLimits(None, max_completion_length=3,
                                                                          truncation_mode=mode))
        assert pair == TokenizedPair(prompt, [11, 12, 13], [21, 22]) and cuts == (False, 1, False)
        pair, cuts = truncate_pair(prompt, chosen, rejected, LengthLimits(10, 4, 3, mode))
        assert pair == TokenizedPair([5, 6, 7, 8], [11, 12, 13], [21, 22]) and cuts == (True, 1, False)
    # the caps first, then max_length: keep_end cuts the capped prompt further, keep_start the responses
    assert truncate_pair(prompt, chosen, rejected, LengthLimits(6, 4, 3, "keep_end"))[0] == TokenizedPair(
        [6, 7, 8], [11, 12, 13], [21, 22])
    assert truncate_pair(prompt, chosen, rejected, LengthLimits(6, 4, 3, "keep_start"))[0] == TokenizedPair(
        [5, 6, 7, 8], [11, 12], [21, 22])


def test_limits_that_leave_no_room_are_refused():
    for limits in (dict(max_length=1), dict(max_length=8, max_prompt_length=0),
                   dict(max_length=8, max_completion_length=0), dict(max_length=8, truncation_mode="left")):
        with pytest.raises(AlignlabError):
            LengthLimits(**limits)


def test_the_token_cache_key_changes_with_each_length_setting(tiny_chat_model, tmp_path, monkeypatch):
    tokenizer = load_tokenizer(str(tiny_chat_model))
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(6)))
    pairs = load_pairs(str(source)).pairs
    base = dict(max_length=24, max_prompt_length=None, raw_prompts=False, max_completion_length=None,
                truncation_mode="keep_start")

    def cached(**settings):
        s = base | settings
        return tokenise.cached_tokenize_pairs(tokenizer, "tok", pairs, s["max_length"], s["max_prompt_length"],
                                              s["raw_prompts"], tmp_path,
                                              max_completion_length=s["max_completion_length"],
                                              truncation_mode=s["truncation_mode"])

    changes = [dict(max_length=23), dict(max_prompt_length=8), dict(max_completion_length=5),
               dict(truncation_mode="keep_end"), dict(raw_prompts=True)]
    expected = {}
    for change in [{}] + changes:
        expected[json.dumps(change)] = cached(**change)
    monkeypatch.setattr(tokenise, "tokenize_pairs", lambda *args, **kwargs: pytest.fail("tokenised again"))
    for change in [{}] + changes:  # each read back from its own entry: the same ids and counts
        examples, report = cached(**change)
        assert (examples, vars(report)) == (expected[json.dumps(change)][0], vars(expected[json.dumps(change)][1]))
    for change in (dict(max_length=22), dict(max_prompt_length=9), dict(max_completion_length=6),
                   dict(max_prompt_length=8, truncation_mode="keep_end")):
        with pytest.raises(pytest.fail.Exception, match="tokenised again"):
            cached(**change)


def test_max_length_alone_is_a_valid_config_and_tokenises_within_it(tiny_chat_model, tmp_path):
    config = TrainConfig(model=str(tiny_chat_model), data=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "out"),
                         max_length=64)
    config.validate()
    assert (config.max_completion_length, config.truncation_mode) == (None, "keep_start")
    examples, _ = tokenize_pairs(load_tokenizer(str(tiny_chat_model)), PAIRS, raw_prompts=config.raw_prompts,
                                 **tokenise.length_settings(config))
    assert all(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= 64 for e in examples)


def test_the_run_summary_says_how_many_pairs_were_truncated(tiny_model, pairs_file, tmp_path):
    from alignlab.training import train

    train(config_for(tiny_model, pairs_file, tmp_path / "run", max_length=24, max_prompt_length=8, max_steps=1))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["truncation"].startswith("16 pairs tokenised, 16 of them truncated: 16 prompts cut")


ids = st.lists(st.integers(1, 1000), min_size=1, max_size=40)
optional_count = st.none() | st.integers(1, 50)


@settings(max_examples=400, deadline=None)
@given(ids, ids, ids, st.none() | st.integers(2, 60), optional_count, optional_count,
       st.sampled_from(["keep_start", "keep_end"]))
def test_any_lengths_fit_max_length_keep_a_token_of_each_response_and_match_trl(
        prompt, chosen, rejected, max_length, max_prompt_length, max_completion_length, mode):
    """Never dropped: a pair TRL drops (keep_start, prompt filling max_length) keeps a response token."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    limits = LengthLimits(max_length, max_prompt_length, max_completion_length, mode)
    pair, (prompt_cut, responses_cut, filling) = truncate_pair(prompt, chosen, rejected, limits)
    report = TruncationReport()
    report.add((prompt_cut, responses_cut, filling))
    assert pair.prompt_ids and pair.chosen_ids and pair.rejected_ids
    if max_length is not None:
        assert len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids)) <= max_length
    # the caps as TRL 0.x applied them, before TRL 1.16's collator
    capped_prompt = prompt[-max_prompt_length:] if max_prompt_length else prompt
    capped = [r[:max_completion_length] if max_completion_length else r for r in (chosen, rejected)]
    assert capped_prompt[len(capped_prompt) - len(pair.prompt_ids):] == pair.prompt_ids
    assert prompt_cut == (len(pair.prompt_ids) < len(prompt))
    assert responses_cut == (len(pair.chosen_ids) < len(chosen)) + (len(pair.rejected_ids) < len(rejected))
    assert report.pairs_truncated == (prompt_cut or responses_cut > 0) and report.prompts_filling == filling
    trl = DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode=mode)(
        [{"prompt_ids": capped_prompt, "chosen_ids": capped[0], "rejected_ids": capped[1]}])
    trl_drops = max_length is not None and mode == "keep_start" and len(capped_prompt) >= max_length
    assert filling == trl_drops
    for row, response in enumerate((pair.chosen_ids, pair.rejected_ids)):
        n = int(trl["attention_mask"][row].sum())
        trl_row, trl_mask = trl["input_ids"][row, :n].tolist(), trl["completion_mask"][row, :n].tolist()
        if mode == "keep_start":
            assert response == capped[row][:len(response)]
            if not trl_drops:
                assert pair.prompt_ids + response == trl_row
        else:
            assert response == capped[row][len(capped[row]) - len(response):]
            assert response == scored(trl_row, trl_mask)
            if trl_mask[0] == 0:
                assert trl_row[n - len(pair.prompt_ids) - len(response):] == pair.prompt_ids + response
