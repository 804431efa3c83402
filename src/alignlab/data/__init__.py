"""Stage 1, data: preference pairs read from files or the Hub (`pairs`), then tokenised and
collated into batches (`tokenise`)."""

from alignlab.data.pairs import LoadResult, PreferencePair, hh_transcript, load_pairs, write_pairs_jsonl
from alignlab.data.tokenise import (PromptRenderer, TokenizedPair, TruncationReport, collate_pairs, collate_sequences,
                                    collate_shared_prompt, fingerprint_tokens, tokenize_pairs)

__all__ = ["LoadResult", "PreferencePair", "hh_transcript", "load_pairs", "write_pairs_jsonl", "PromptRenderer",
           "TokenizedPair", "TruncationReport", "collate_pairs", "collate_sequences", "collate_shared_prompt",
           "fingerprint_tokens", "tokenize_pairs"]
