"""Stage 1, data: records read from files or the Hub (`readers`) as preference pairs (`pairs`), then
tokenised and collated into batches (`tokenise`) in one of the pair layouts (`layouts`)."""

from alignlab.data.pairs import FORMATS, LoadResult, PreferencePair, hh_transcript, load_pairs, write_pairs_jsonl
from alignlab.data.readers import MAX_LINE_BYTES, Where, read_records
from alignlab.data.tokenise import (PromptRenderer, TokenizedPair, TruncationReport, collate_pairs, collate_sequences,
                                    fingerprint_tokens, tokenize_pairs)
from alignlab.data.layouts import LAYOUTS, PairLayout, collate_position_packed, collate_shared_prompt

__all__ = ["FORMATS", "LoadResult", "PreferencePair", "hh_transcript", "load_pairs", "write_pairs_jsonl",
           "MAX_LINE_BYTES", "Where", "read_records", "PromptRenderer", "TokenizedPair", "TruncationReport",
           "collate_pairs", "collate_sequences", "fingerprint_tokens", "tokenize_pairs", "LAYOUTS", "PairLayout",
           "collate_position_packed", "collate_shared_prompt"]
