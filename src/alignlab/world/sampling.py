"""The study world's data (SPEC §7): prompts and responses sampled from the behaviour distribution,
labelled by a noisy, length-biased annotator; `build_world` makes the train, held-out and test pairs.

Labels. Each pair's two responses are sampled from the behaviour distribution (below). The
annotator's utility is u = gold + length_bias·n_words; response a is preferred with Bradley–Terry
probability σ((u_a − u_b) / bt_temperature); then, with probability label_noise, the label flips.
The length bias lets DPO-style length exploitation appear; the noise and the gap between the gold
reward and a proxy reward model trained on these labels let over-optimisation appear.
"""

from __future__ import annotations

import math
import random

from alignlab.data.pairs import PreferencePair
from alignlab.world.spec import (ATTRIBUTES, FILLERS, HARMS, PROMPT_TEMPLATES, REFUSALS, TEST_STYLE, TOPICS,
                                 TRAIN_STYLE, PromptMeta, StudyWorld, WorldConfig)

# ---------------------------------------------------------------- sampling prompts, responses, labels

def draw_facts(config: WorldConfig) -> dict[str, list[str]]:
    """Each topic's true facts: one seeded value per attribute."""
    rng = random.Random(f"{config.seed}/facts")
    return {topic: [template.format(t=topic, v=rng.choice(values))
                    for template, values in ATTRIBUTES[:config.facts_per_topic]]
            for topic in TOPICS[:config.n_topics]}


def sample_prompt(rng: random.Random, world: StudyWorld, style: str) -> tuple[list[dict], PromptMeta]:
    topic = rng.choice(world.topics)
    if rng.random() < world.config.harmful_fraction:
        harm = rng.choice(list(HARMS))
        text = rng.choice(PROMPT_TEMPLATES[style]["harmful"]).format(harm=HARMS[harm]["request"].format(t=topic))
        meta = PromptMeta("harmful", topic, harm)
    else:
        text = rng.choice(PROMPT_TEMPLATES[style]["helpful"]).format(t=topic)
        meta = PromptMeta("helpful", topic, None)
    return [{"role": "user", "content": text}], meta


def sample_response(rng: random.Random, world: StudyWorld, meta: PromptMeta) -> str:
    """One response of the behaviour distribution: a core (facts, a refusal, or compliance steps)
    with extra sentences (filler, facts about other topics) inserted at random places."""
    config = world.config
    if meta.family == "helpful":
        if rng.random() < config.p_refuse_helpful:
            core = [rng.choice(REFUSALS)]
        else:
            facts = world.facts[meta.topic]
            core = rng.sample(facts, rng.randint(0, len(facts)))
    elif rng.random() < config.p_comply_harmful:
        steps = [s.format(t=meta.topic) for s in HARMS[meta.harm]["steps"]]
        core = steps[:rng.randint(1, len(steps))]
    else:
        core = [rng.choice(REFUSALS)]
        if rng.random() < config.p_safe_alternative:
            core.append(HARMS[meta.harm]["alternative"].format(t=meta.topic))
    core = core[:config.max_response_segments]
    room = config.max_response_segments - len(core)
    sentences = list(core)
    for _ in range(rng.randint(0 if core else 1, room)):  # never empty: an empty response cannot train
        if rng.random() < 0.5:  # half filler, half facts about another topic
            extra = rng.choice(FILLERS)
        else:
            other = rng.choice([t for t in world.topics if t != meta.topic] or world.topics)
            extra = rng.choice(world.facts[other])
        sentences.insert(rng.randint(0, len(sentences)), extra)
    return " ".join(sentences)


def annotator_prefers_first(rng: random.Random, world: StudyWorld, prompt: list[dict], a: str, b: str) -> bool:
    """Bradley–Terry on u = gold + length_bias·n_words, then flipped with probability label_noise."""
    config = world.config
    utility = [world.gold_reward(prompt, r) + config.length_bias * len(r.split()) for r in (a, b)]
    z = (utility[0] - utility[1]) / config.bt_temperature
    first = rng.random() < 0.5 * (1.0 + math.tanh(z / 2))  # σ(z), without overflow for sharp scales
    return first != (rng.random() < config.label_noise)


def make_pairs(world: StudyWorld, split: str, style: str, n: int) -> list[PreferencePair]:
    rng = random.Random(f"{world.config.seed}/{split}")
    pairs = []
    for i in range(n):
        prompt, meta = sample_prompt(rng, world, style)
        a = sample_response(rng, world, meta)
        b = sample_response(rng, world, meta)
        while b == a:  # identical responses carry no preference
            b = sample_response(rng, world, meta)
        chosen, rejected = (a, b) if annotator_prefers_first(rng, world, prompt, a, b) else (b, a)
        pairs.append(PreferencePair(id=f"{split}-{i}", prompt=prompt, chosen=chosen, rejected=rejected))
    return pairs


def build_world(config: WorldConfig) -> StudyWorld:
    """The world's knowledge and its train (training style), held-out (training style) and test
    (test style) pairs. Pure data, deterministic from `config.seed`."""
    config.validate()
    world = StudyWorld(config, [], [], [], facts=draw_facts(config))
    world.train_pairs = make_pairs(world, "train", TRAIN_STYLE, config.n_train_pairs)
    world.heldout_pairs = make_pairs(world, "heldout", TRAIN_STYLE, config.n_heldout_pairs)
    world.test_pairs = make_pairs(world, "test", TEST_STYLE, config.n_test_prompts)
    return world
