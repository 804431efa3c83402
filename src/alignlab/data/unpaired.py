"""Unpaired preference data (KTO; TRL's unpaired format) and how the pair trainer trains on it.

A record: `prompt` (text, or messages ending with a user message; `prompt_column` renames it),
`completion` (text, or TRL's conversational form: a list of one assistant message), `label` (true
when the completion is desirable; JSON booleans, CSV cells true/false) and an optional `id` (else
"<stem>-<position>", as for pairs). A bad record is an InputError naming file, line (or row), field
and fix; a blank completion is one too (the data is the user's own, as in the generic pairs format).

Preference pairs train KTO too: `unpair` splits each pair in two, as TRL's `unpair_preference_dataset`
does: the chosen response labelled true, the rejected one false (ids "<id>-chosen", "<id>-rejected";
rewards are dropped). `load_unpaired` reads a source as unpaired when its first record is (it holds a
completion and no chosen response), else as pairs in any format (`load_pairs`) and unpairs them; one
source holds one kind.

Pseudo-pairs (`kl_pseudo_pairs`): KTO estimates KL(πθ ‖ πref) from completions paired with prompts they
do not answer (TRL shifts completions by one within each batch). The trainer forwards a pair's two
responses, so example i becomes the pair (prompt x_i, chosen = its completion y_i, rejected = a
mismatched completion y_j), its label beside it; y_j serves only the KL estimate. j is fixed for the
data, whatever the run's seed: so the tokens, and the cached reference log-probs, are shared by every
run of a sweep. The examples are grouped by prompt, the groups put in a seeded random order (`KL_SEED`)
and laid end to end, and each example takes the completion m places further on, cyclically, where m is
the largest group's size: so j ≠ i always, the prompts differ whenever no prompt holds more than half
the examples (else as many as can), and every completion serves exactly once as a KL completion, as
in TRL's shift.
"""

from __future__ import annotations

import collections
import json
import random
from dataclasses import dataclass, field

from alignlab.data.options import Columns
from alignlab.data.pairs import LoadResult, PreferencePair, load_pairs, messages, record_id
from alignlab.data.readers import Where, a_type, read_records
from alignlab.errors import InputError
from alignlab.untrusted import shown

KL_SEED = 0
UNPAIRED_FIX = ("Unpaired records need 'prompt' (text or messages), 'completion' (text, or a list of one assistant "
                "message) and 'label' (true or false)")


@dataclass
class UnpairedExample:
    id: str
    prompt: list[dict[str, str]]  # conversation turns, ending with a user turn
    completion: str
    label: bool  # True: desirable


@dataclass
class UnpairedLoad(LoadResult):
    """KTO's training data: `pairs` are the pseudo-pairs (see the module docstring), `labels` their labels."""

    labels: list[bool] = field(default_factory=list)
    unpaired_from: int = 0  # preference pairs split into two examples each (0: the source was unpaired)

    def summary(self) -> str:
        desirable = sum(self.labels)
        line = (f"{self.source}: kept {len(self.pairs)} labelled examples ({desirable} desirable, "
                f"{len(self.labels) - desirable} undesirable)")
        if self.unpaired_from:
            line += f" from {self.unpaired_from} preference pairs"
        line += f", dropped {sum(self.dropped.values())}"
        if self.dropped:
            line += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.dropped.most_common()) + ")"
        return line


def is_unpaired_record(record, columns: Columns | None = None) -> bool:
    """Whether a record is an unpaired one: a completion and no chosen response."""
    chosen = (columns or Columns()).chosen or "chosen"
    return isinstance(record, dict) and "completion" in record and chosen not in record


def unpair(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Each pair as two examples, chosen (label true) then rejected (label false): TRL's unpairing."""
    return [UnpairedExample(f"{p.id}-{side}", p.prompt, response, side == "chosen")
            for p in pairs for side, response in (("chosen", p.chosen), ("rejected", p.rejected))]


def load_unpaired(source: str, format: str = "pairs", *, filter: str | None = None, preference: str = "better",
                  split: str = "train", dataset_config: str | None = None, data_dir: str | None = None,
                  revision: str | None = None, columns: Columns | None = None, seed: int = KL_SEED) -> UnpairedLoad:
    """KTO's data from `source`: unpaired records, or preference pairs unpaired (options as `load_pairs`),
    as pseudo-pairs with their labels (see the module docstring)."""
    source, columns = str(source), columns or Columns()
    hub = {"dataset_config": dataset_config, "data_dir": data_dir, "revision": revision}
    first = None
    if format == "pairs":
        records = read_records(source, split, **hub)
        try:
            first = next(iter(records), None)
        finally:
            getattr(records, "close", lambda: None)()
    if first is not None and is_unpaired_record(first[1], columns):
        examples = _read_unpaired(read_records(source, split, **hub), columns)
        dropped, unpaired_from = collections.Counter(), 0
    else:
        loaded = load_pairs(source, format, filter=filter, preference=preference, split=split, columns=columns, **hub)
        examples, dropped, unpaired_from = unpair(loaded.pairs), loaded.dropped, len(loaded.pairs)
    if len(examples) == 1:
        raise InputError("one example: KTO estimates its KL term from completions paired with other prompts, so it "
                         "needs at least two", file=source, fix="Add examples")
    return UnpairedLoad(kl_pseudo_pairs(examples, seed), dropped, source, [e.label for e in examples], unpaired_from)


def kl_pseudo_pairs(examples: list[UnpairedExample], seed: int = KL_SEED) -> list[PreferencePair]:
    """Example i as the pair (its prompt, its completion, the mismatched completion of example j), in
    the examples' order; j as the module docstring says. Needs two examples or more (or none)."""
    n = len(examples)
    if n == 0:
        return []
    if n == 1:
        raise ValueError("kl_pseudo_pairs: one example has no other completion to pair its prompt with")
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(json.dumps(example.prompt, sort_keys=True), []).append(i)
    ordered = list(groups.values())
    random.Random(seed).shuffle(ordered)
    sequence = [i for group in ordered for i in group]
    shift = max(map(len, ordered))
    shift = shift if shift < n else 1  # one prompt only: the next example's completion
    partner = [0] * n
    for k, i in enumerate(sequence):
        partner[i] = sequence[(k + shift) % n]
    return [PreferencePair(e.id, e.prompt, e.completion, examples[partner[i]].completion)
            for i, e in enumerate(examples)]


# ---------------------------------------------------------------- records

def _read_unpaired(records, columns: Columns) -> list[UnpairedExample]:
    examples, first_seen = [], {}
    for where, record in records:
        example = unpaired_example(record, where, columns)
        if example.id in first_seen:
            raise where.error(f"duplicate id {shown(example.id)}, first used at {first_seen[example.id]}", field="id",
                              fix="Give every record a unique id, or leave ids out to generate them")
        first_seen[example.id] = where
        examples.append(example)
    return examples


def unpaired_example(record, where: Where, columns: Columns | None = None) -> UnpairedExample:
    """One unpaired record, checked (see the module docstring)."""
    prompt_name = (columns or Columns()).prompt or "prompt"
    if not isinstance(record, dict):
        raise where.error(f"record is {a_type(record)}, expected an object with named fields")
    if not is_unpaired_record(record, columns):
        raise where.error("is missing" if "completion" not in record else "is beside a 'chosen' response",
                          field="completion", fix="The source's first record is unpaired (prompt/completion/label), "
                          "so every record must be; keep preference pairs (chosen/rejected) in a source of their own")
    prompt = _turns(_present(record, prompt_name, where), prompt_name, where)
    if prompt[-1]["role"] != "user":
        raise where.error("the prompt must end with a user message", field=prompt_name, fix=UNPAIRED_FIX)
    completion = _present(record, "completion", where)
    if isinstance(completion, list):
        turns = _turns(completion, "completion", where)
        if len(turns) != 1 or turns[0]["role"] != "assistant":
            raise where.error(f"expected one assistant message, got roles {shown([t['role'] for t in turns])}",
                              field="completion", fix=UNPAIRED_FIX)
        completion = turns[0]["content"]
    elif not isinstance(completion, str):
        raise where.error(f"expected a string or a list of messages, got {a_type(completion)}", field="completion",
                          fix=UNPAIRED_FIX)
    if not completion.strip():
        raise where.error("empty completion", field="completion", fix="Fill in the completion or remove the record")
    label = _present(record, "label", where)
    if not isinstance(label, bool):
        raise where.error(f"expected true or false, got {shown(label)}", field="label",
                          fix="Labels are booleans (true: the completion is desirable), not strings or numbers")
    return UnpairedExample(record_id(record, where), prompt, completion, label)


def _present(record: dict, name: str, where: Where):
    if record.get(name) is None:
        raise where.error("is missing" if name not in record else "is null", field=name, fix=UNPAIRED_FIX)
    return record[name]


def _turns(value, name: str, where: Where) -> list[dict[str, str]]:
    """Text (one user turn) or a non-empty list of {role, content} messages, only role and content kept."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise where.error(f"expected text or a non-empty list of messages, got {a_type(value)}", field=name,
                          fix=UNPAIRED_FIX)
    return messages(value, name, where, UNPAIRED_FIX)


