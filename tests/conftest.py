import json
import os
from pathlib import Path

# As the CLI does: keep library progress bars out of the output the tests read.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

from alignlab.config import TrainConfig  # noqa: E402
from alignlab.models.tiny import build_tiny_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
THINGS = ["apple", "sky", "leaf", "banana", "plum", "carrot", "coal", "snow"]


def make_pairs(n: int = 16) -> list[dict]:
    """Preference pairs with an obvious preference: a direct answer over an evasive one."""
    pairs = []
    for i in range(n):
        thing, color = THINGS[i % len(THINGS)], COLORS[i % len(COLORS)]
        pairs.append({
            "id": f"pair-{i}",
            "prompt": f"What color is the {thing} number {i}?",
            "chosen": f"The {thing} is {color}.",
            "rejected": "I do not know, and I will not guess anything about it at all.",
            "reward_chosen": 1.0 + 0.1 * (i % 3),
            "reward_rejected": -1.0,
        })
    return pairs


def config_for(model, data, out, **overrides) -> TrainConfig:
    settings = dict(method="dpo", model=str(model), data=str(data), out=str(out), learning_rate=5e-3,
                    batch_size=4, epochs=1, warmup_ratio=0.0, lr_scheduler="constant", max_length=64,
                    max_prompt_length=32)
    settings.update(overrides)
    return TrainConfig(**settings)


def corpus() -> list[str]:
    texts = []
    for pair in make_pairs(32):
        texts += [pair["prompt"], pair["chosen"], pair["rejected"]]
    return texts + ["Human: Assistant: user assistant system"] * 4


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama with a plain-format tokenizer (no chat template, no pad token)."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-plain", corpus(), seed=0)


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has a chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-chat", corpus(), seed=1,
                            chat_template=True)


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(16)))
    return path


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    """A cache directory shared by the tests that build the tiny study world, so it is built once."""
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own alignlab cache, so cache hits are never carried between tests."""
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    return tmp_path / "cache"
