"""The study world's models (SPEC §7): tokenizer, pre-training corpus, tiny Llama, pre-training, SFT,
and their cache.

Models. A word-level tokenizer over the world's closed vocabulary, with a prefix-consistent chat
template; a tiny Llama pre-trained from scratch on rendered conversations of both styles and all
behaviours (`pretrain`), then SFT on the chosen responses of the training pairs with alignlab's own
trainer. Both are cached under a hash of the config and `WORLD_VERSION` (`build_world_models`).

Shipped base models. Pre-training is not what a study studies, and it is most of a cold `alignlab
run`, so the pre-trained LMs of the `tiny` and `default` presets (seed 0) ship with the package in
`base_models/<preset>/` (rebuilt by `python -m alignlab.world.ship_base`). Their manifest.json names
the world key they were built for and a sha256 of every file; a world with that key starts from the
shipped base when every file matches, and pre-trains otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.atomic import atomic_dir, write_json
from alignlab.cache import sha256_file
from alignlab.data.pairs import write_pairs_jsonl
from alignlab.world.sampling import sample_prompt, sample_response
from alignlab.world.spec import TEST_STYLE, TRAIN_STYLE, WORLD_VERSION, StudyWorld, WorldConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- tokenizer format

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]
# Prefix-consistent: the prompt rendered with add_generation_prompt=True is a prefix of the prompt
# plus assistant turn, and the assistant turn ends with EOS, so generation stops there.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


# ---------------------------------------------------------------- tokenizer and models

def build_tokenizer(world: StudyWorld):
    """A word-level tokenizer over the world's closed vocabulary, with the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [PAD, BOS, EOS, UNK, *ROLE_TOKENS, *world.vocabulary()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # No decoder: tokens are joined by single spaces, which is exactly how world text is written, and
    # no clean-up of spaces before punctuation, so decode(encode(text)) == text.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                        unk_token=UNK, additional_special_tokens=ROLE_TOKENS,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def pretraining_corpus(world: StudyWorld, tokenizer) -> list[list[int]]:
    """Token ids of `pretrain_conversations` rendered conversations: prompts of both styles with
    responses of every behaviour, so the base model can write every segment type."""
    rng = random.Random(f"{world.config.seed}/pretrain")
    texts = []
    for _ in range(world.config.pretrain_conversations):
        prompt, meta = sample_prompt(rng, world, rng.choice([TRAIN_STYLE, TEST_STYLE]))
        turn = {"role": "assistant", "content": sample_response(rng, world, meta)}
        texts.append(tokenizer.apply_chat_template(prompt + [turn], tokenize=False))
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def padded_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels with padding ignored (-100)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return input_ids, mask, input_ids.masked_fill(mask == 0, -100)


def new_model(config: WorldConfig, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=2 * config.max_length,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(model_config)


def pretrain(world: StudyWorld, directory: Path) -> None:
    """Next-token pre-training from scratch, one rendered conversation per row (so every row starts
    at <s>, as at inference), padded batches; AdamW with warm-up and cosine decay, seeded. Saves the
    model and its tokenizer to `directory`."""
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    config = world.config
    tokenizer = build_tokenizer(world)
    conversations = pretraining_corpus(world, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = new_model(config, tokenizer).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.pretrain_lr, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=config.pretrain_steps // 20,
                                                num_training_steps=config.pretrain_steps)
    generator = torch.Generator().manual_seed(config.seed)
    order, cursor = torch.randperm(len(conversations), generator=generator).tolist(), 0
    model.train()
    progress = tqdm(range(config.pretrain_steps), desc="pretrain world LM", unit="step")
    for _ in progress:
        if cursor + config.pretrain_batch_size > len(order):  # next pass over the data, reshuffled
            order, cursor = torch.randperm(len(conversations), generator=generator).tolist(), 0
        rows = [conversations[i] for i in order[cursor:cursor + config.pretrain_batch_size]]
        cursor += config.pretrain_batch_size
        input_ids, attention_mask, labels = (t.to(device) for t in padded_batch(rows, tokenizer.pad_token_id))
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def supervised_finetune(world: StudyWorld, pretrained: Path, directory: Path, cache_dir: Path) -> None:
    """SFT on the chosen responses of the training pairs with alignlab's trainer: a run directory
    at `directory`, its model in `directory/model`."""
    from alignlab.config import TrainConfig
    from alignlab.training import train

    config = world.config
    data = directory.parent / "sft-pairs.jsonl"
    write_pairs_jsonl(world.train_pairs, data)
    train(TrainConfig(method="sft", model=str(pretrained), data=str(data), out=str(directory),
                      learning_rate=config.sft_lr, epochs=config.sft_epochs,
                      batch_size=config.sft_batch_size, max_length=config.max_length,
                      max_prompt_length=config.max_prompt_length, seed=config.seed,
                      logging_steps=10, cache_dir=str(cache_dir)))


@dataclass
class WorldModels:
    pretrained: Path  # tokenizer + pre-trained LM
    sft: Path  # tokenizer + SFT model
    pretrain_seconds: float  # 0 when the base model was shipped
    sft_seconds: float
    cached: bool  # True when read from the cache, not trained now
    shipped_base: bool  # True when the base model came with the package, not pre-trained here


def world_key(config: WorldConfig) -> str:
    text = json.dumps(dataclasses.asdict(config), sort_keys=True) + WORLD_VERSION
    return hashlib.sha256(text.encode()).hexdigest()


WORLD_MANIFEST = "manifest.json"  # written last: the full key and a sha256 of every other file
_WORLD_REQUIRED = ("world.json", "pretrained/model.safetensors", "sft/model/model.safetensors")
SHIPPED_BASES = Path(__file__).parent / "base_models"  # <preset>/: pretrain()'s files and WORLD_MANIFEST
BASE_REQUIRED = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")


def file_hashes(home: Path) -> dict[str, str]:
    return {path.relative_to(home).as_posix(): sha256_file(path) for path in sorted(home.rglob("*"))
            if path.is_file() and path.relative_to(home).as_posix() != WORLD_MANIFEST}


def world_cache_problem(home: Path, key: str, required: tuple[str, ...] = _WORLD_REQUIRED) -> str | None:
    """Why the cached world (or shipped base model) at `home` must not be used (None: it is whole
    and it is this world's): its manifest must carry the full `key`, list every `required` file,
    and each listed file must match its sha256."""
    try:
        manifest = json.loads((home / WORLD_MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it has no manifest.json"
    except (OSError, ValueError) as err:
        return f"its manifest.json is unreadable ({err})"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "it was built for another world config (key mismatch)"
    files = manifest.get("files")
    if not isinstance(files, dict) or any(name not in files for name in required):
        return "its manifest.json does not list the world's files"
    for name, digest in files.items():
        path = home / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} does not match its checksum"
    return None


def shipped_base(key: str) -> Path | None:
    """The shipped base model built for world `key`, verified; None when none is (then the caller
    pre-trains). A shipped base whose files do not match their checksums is refused with a warning."""
    for manifest in sorted(SHIPPED_BASES.glob(f"*/{WORLD_MANIFEST}")):
        try:
            shipped_key = json.loads(manifest.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError, AttributeError) as err:
            log.warning("%s: unreadable (%s); reinstall alignlab", manifest, err)
            continue
        if shipped_key != key:
            continue
        problem = world_cache_problem(manifest.parent, key, BASE_REQUIRED)
        if problem is None:
            return manifest.parent
        log.warning("shipped base model %s is not usable: %s; pre-training instead (reinstall alignlab, or "
                    "rebuild it: python -m alignlab.world.ship_base --preset %s)",
                    manifest.parent, problem, manifest.parent.name)
        return None
    return None


def build_world_models(world: StudyWorld, cache_dir: Path | None = None) -> WorldModels:
    """The pre-trained and SFT models of `world`, trained once per config and then read from the
    cache. `<cache_dir>/world/<key>/` (key: sha256 of the config as JSON and WORLD_VERSION) holds
    pretrained/ (model + tokenizer: the shipped base when there is one for this key, see
    `shipped_base`, otherwise pre-trained now), sft/ (alignlab's run directory; the model in sft/model),
    sft-pairs.jsonl (the pairs SFT trained on), world.json (config and timings) and, written last,
    manifest.json (the full key and a sha256 of every other file). It is written to a temp directory
    and renamed into place whole, so a killed build leaves nothing to reuse; on every load the key and
    checksums are verified, and a corrupt or foreign directory is rebuilt with a warning, never used."""
    from alignlab.cache import default_cache_dir

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = world_key(world.config)
    home = cache_dir / "world" / key[:24]
    problem = world_cache_problem(home, key) if home.exists() else "not built yet"
    if problem is not None:
        if home.exists():
            log.warning("world cache %s is not usable: %s; rebuilding it", home, problem)
        base = shipped_base(key)
        with atomic_dir(home) as staging:
            started = time.perf_counter()
            if base is None:
                pretrain(world, staging / "pretrained")
                pretrain_seconds = time.perf_counter() - started
            else:
                (staging / "pretrained").mkdir()
                for name in json.loads((base / WORLD_MANIFEST).read_text(encoding="utf-8"))["files"]:
                    shutil.copyfile(base / name, staging / "pretrained" / name)
                pretrain_seconds = 0.0
            started = time.perf_counter()
            supervised_finetune(world, staging / "pretrained", staging / "sft", cache_dir)
            sft_seconds = time.perf_counter() - started
            write_json(staging / "world.json", {
                "world_version": WORLD_VERSION, "config": dataclasses.asdict(world.config),
                "pretrain_seconds": round(pretrain_seconds, 3), "sft_seconds": round(sft_seconds, 3),
                "shipped_base": base is not None})
            write_json(staging / WORLD_MANIFEST, {"key": key, "world_version": WORLD_VERSION,
                                                  "files": file_hashes(staging)})
        log.info("built world models in %s (%s, SFT %.1fs)", home,
                 f"pre-training {pretrain_seconds:.1f}s" if base is None else f"the shipped base model {base}",
                 sft_seconds)
        return WorldModels(home / "pretrained", home / "sft" / "model", pretrain_seconds, sft_seconds, False,
                           base is not None)
    recorded = json.loads((home / "world.json").read_text())
    # Caches written before base models shipped have no "shipped_base": their bases were pre-trained.
    return WorldModels(home / "pretrained", home / "sft" / "model", recorded["pretrain_seconds"],
                       recorded["sft_seconds"], True, recorded.get("shipped_base", False))
