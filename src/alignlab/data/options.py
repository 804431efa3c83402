"""What a user says about a dataset beside its path, as the config fields name it (OptimConfig,
EvalConfig, `alignlab data`'s flags, a study's test_data_options): which part of a Hugging Face
dataset to load, and which columns of a record hold a preference pair (the "pairs" format)."""

from __future__ import annotations

from dataclasses import dataclass

# The settings `data_options` reads; a revision of the dataset is "data_revision", since "revision"
# names the model's.
DATA_OPTIONS = ("dataset_config", "data_dir", "data_revision", "prompt_column", "chosen_column", "rejected_column",
                "reward_chosen_column", "reward_rejected_column")


@dataclass(frozen=True)
class Columns:
    """The record fields the generic "pairs" format reads the pair from; None keeps the usual field:
    prompt, chosen, rejected, and for rewards reward_chosen/reward_rejected, else score_chosen/score_rejected."""

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    reward_chosen: str | None = None
    reward_rejected: str | None = None

    @property
    def mapped(self) -> dict[str, str]:
        """Option name (e.g. prompt_column) -> the column it names, for the columns given."""
        return {f"{part}_column": column for part, column in vars(self).items() if column is not None}


def data_options(settings: dict) -> dict:
    """`alignlab.data.pairs.load_pairs`' keyword arguments from settings named as DATA_OPTIONS (a
    config's `vars`, a study's test_data_options); a setting left out is None."""
    return {"dataset_config": settings.get("dataset_config"), "data_dir": settings.get("data_dir"),
            "revision": settings.get("data_revision"),
            "columns": Columns(*(settings.get(f"{part}_column") for part in
                                 ("prompt", "chosen", "rejected", "reward_chosen", "reward_rejected")))}
