"""What `alignlab bench` trains on: a shape's model and pairs, written to a work directory before any
clock starts.

Shapes (each with a `quick` and a `full` size):
- `tiny`: deterministic synthetic pairs, short and single-turn, and a tiny Llama with a word-level
  tokenizer: the regime where fixed overheads dominate.
- `hh`: real HH-RLHF pairs (multi-turn prompts much longer than the final responses, response
  lengths varying widely), a byte-level BPE tokenizer of 8,192 tokens trained here on that text with
  `tokenizers`, and a ~23M-parameter Llama (hidden 512, 6 layers) at max_length 512: compute dominates.
- `--model PATH` instead: the user's model on the bench pairs or the pairs of `--data`.

Both libraries must train on exactly the same tokens. alignlab keeps a long prompt's last tokens and
TRL a long sequence's first, so the pairs taken from a file are the first ones that neither truncates
(prompt at most half of max_length, prompt + longer response at most max_length).
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPES = {
    "tiny": {"quick": dict(pairs=256, hidden_size=64, layers=2, heads=4, batch_size=8, repeats=2, max_length=128),
             "full": dict(pairs=512, hidden_size=256, layers=4, heads=8, batch_size=8, repeats=3, max_length=128)},
    "hh": {"quick": dict(pairs=48, hidden_size=512, layers=6, heads=8, batch_size=8, repeats=1, max_length=512),
           "full": dict(pairs=128, hidden_size=512, layers=6, heads=8, batch_size=8, repeats=2, max_length=512)},
}
HH_VOCAB = 8192
# The HH-RLHF harmless-base test split, where this project's shared data lives (relative to the
# directory the bench runs in); --data names any other file.
HH_DATA = Path("../shared/data/hh-rlhf/harmless-base/test.jsonl.gz")
USER_MODEL_MAX_LENGTH = 256  # real models' chat templates add a system turn to every prompt
# `--model --quick`'s batch: 8 pairs, both libraries' default (alignlab's batch_size, TRL's
# per_device_train_batch_size), so that each side trains in the shape its users get. Its warm-ups (one
# optimizer step each) size the run: SmolLM2-135M, one step on 8 HH pairs, from files to the saved
# model, took alignlab 15-20 s and TRL 32 s on 2 quiet CPU cores, so warm-ups and a run per mode fit
# 5 minutes. In batches of 2, as before, TRL's padded logits were small and fixed costs (loading,
# saving, the layout check) most of both sides' time: 6 pairs took alignlab 15-17 s, TRL 17-21 s.
USER_MODEL_QUICK_BATCH = 8
SUBJECTS = ["river", "garden", "engine", "violin", "planet", "bakery", "glacier", "harbor", "library", "falcon"]
QUALITIES = ["quiet", "bright", "ancient", "rapid", "gentle", "heavy", "curious", "golden", "narrow", "hollow"]


def bench_pairs(n: int) -> list[dict]:
    """Deterministic pairs of varied lengths; the chosen answer is on topic, the rejected one rambles."""
    rows = []
    for i in range(n):
        subject, quality = SUBJECTS[i % len(SUBJECTS)], QUALITIES[(i * 7) % len(QUALITIES)]
        detail = " ".join(QUALITIES[(i + k) % len(QUALITIES)] for k in range(1 + i % 9))
        rows.append({"id": f"bench-{i}", "prompt": f"tell me about the {quality} {subject} please",
                     "chosen": f"the {subject} is {quality} and {detail} .",
                     "rejected": f"i am not sure . maybe the {subject} is {detail} {detail} or not at all ."})
    return rows


def _setup(workdir: Path, rows: list[dict], model: str, size: dict, max_length: int) -> dict:
    """The pairs written where every worker reads them (with rewards, for VAR), and the setup dict."""
    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, "reward_chosen": 1.0, "reward_rejected": -1.0}) + "\n" for r in rows))
    return {"data": str(path), "model": model, "batch_size": size["batch_size"], "max_length": max_length}


def first_pairs(setup: dict, n: int, workdir: Path) -> dict:
    """`setup` on the first `n` of its pairs, written beside them."""
    path = workdir / f"pairs-{n}.jsonl"
    path.write_text("".join(Path(setup["data"]).read_text().splitlines(keepends=True)[:n]))
    return {**setup, "data": str(path)}


def prepare_tiny(workdir: Path, size: dict) -> dict:
    from alignlab.models.tiny import build_tiny_llama

    rows = bench_pairs(size["pairs"])
    texts = [w for p in rows for w in (p["prompt"], p["chosen"], p["rejected"])]
    build_tiny_llama(workdir / "model", texts, hidden_size=size["hidden_size"], layers=size["layers"],
                     heads=size["heads"], chat_template=True, word_level=True, max_positions=size["max_length"])
    return _setup(workdir, rows, str(workdir / "model"), size, size["max_length"])


def prepare_hh(workdir: Path, size: dict, data: str | None, data_format: str, cycle: bool = False) -> dict:
    """The `hh` shape: the tokenizer is trained on every text of the file, the bench takes its first
    `pairs` pairs that fit untruncated (with `cycle`, all that fit, repeated up to `pairs`)."""
    from alignlab.data.pairs import load_pairs
    from alignlab.errors import AlignlabError
    from alignlab.models.tiny import build_tiny_llama

    if data is None and not HH_DATA.exists():
        raise AlignlabError(f"bench --shape hh: no --data given, and the HH-RLHF file {HH_DATA} is not there "
                            "(relative to this directory); pass --data FILE (HH-RLHF transcripts with "
                            "--data_format hh-rlhf, or prompt/chosen/rejected pairs with --data_format pairs)")
    source = data or str(HH_DATA)
    pairs = load_pairs(source, data_format).pairs
    texts = [text for p in pairs for text in [turn["content"] for turn in p.prompt] + [p.chosen, p.rejected]]
    model = build_tiny_llama(workdir / "model", texts, hidden_size=size["hidden_size"], layers=size["layers"],
                             heads=size["heads"], chat_template=True, vocab_size=HH_VOCAB,
                             max_positions=size["max_length"])
    rows = untruncated_pairs(str(model), pairs, size["pairs"], size["max_length"], source, cycle)
    return _setup(workdir, rows, str(model), size, size["max_length"])


def prepare_user_model(workdir: Path, size: dict, model: str, data: str | None, data_format: str) -> dict:
    """The bench on the user's model: its GGUF file de-quantised here (outside both clocks), the pairs
    of `data` or the bench pairs."""
    from alignlab.data.pairs import load_pairs
    from alignlab.models.gguf import local_model_dir

    directory = local_model_dir(model)
    rows = (untruncated_pairs(directory, load_pairs(data, data_format).pairs, size["pairs"], USER_MODEL_MAX_LENGTH,
                              data) if data else bench_pairs(size["pairs"]))
    return _setup(workdir, rows, directory, size, USER_MODEL_MAX_LENGTH)


def untruncated_pairs(model: str, pairs: list, n: int, max_length: int, source: str, cycle: bool = False
                      ) -> list[dict]:
    """The first `n` of `pairs` that fit `max_length` (prompt at most half of it) untruncated; with
    `cycle`, fewer fitting pairs are repeated in order (ids suffixed #1, #2, ...) up to `n`."""
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.errors import AlignlabError
    from alignlab.models.loading import load_tokenizer

    whole, _ = tokenize_pairs(load_tokenizer(model), pairs, 10**9, 10**9)
    fitting = [pair.to_json() for pair, ids in zip(pairs, whole)
               if len(ids.prompt_ids) <= max_length // 2
               and len(ids.prompt_ids) + max(len(ids.chosen_ids), len(ids.rejected_ids)) <= max_length]
    if cycle and fitting:
        fitting = [dict(pair, id=f"{pair['id']}#{i // len(fitting)}" if i >= len(fitting) else pair["id"])
                   for i, pair in ((i, fitting[i % len(fitting)]) for i in range(n))]
    if len(fitting) < n:
        raise AlignlabError(f"{source}: only {len(fitting)} of {len(pairs)} pairs fit {max_length} tokens "
                            f"(prompt at most {max_length // 2}) untruncated; the bench needs {n} "
                            "(pass a smaller --pairs or a file with shorter pairs)")
    return fitting[:n]


def token_counts(setup: dict) -> dict:
    """Token counts of the bench data as alignlab tokenises it: `forwarded` (prompt twice, as TRL
    counts a pair's two rows: the equal-work check), `pair` (prompt once plus both responses) and
    `sft` (prompt plus chosen), the last two the useful tokens of the MFU rows."""
    from alignlab.data.pairs import load_pairs
    from alignlab.data.tokenise import tokenize_pairs
    from alignlab.models.loading import load_tokenizer

    examples, _ = tokenize_pairs(load_tokenizer(setup["model"]), load_pairs(setup["data"]).pairs,
                                 setup["max_length"], setup["max_length"] // 2)
    prompt, chosen, rejected = (sum(len(getattr(e, f"{part}_ids")) for e in examples)
                                for part in ("prompt", "chosen", "rejected"))
    return {"pairs": len(examples), "forwarded": 2 * prompt + chosen + rejected,
            "pair": prompt + chosen + rejected, "sft": prompt + chosen}
