import html
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

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


def train_until_killed(config: TrainConfig, monkeypatch, micro_batch: int) -> None:
    """Train with `config` until its `micro_batch`-th micro-batch (counted from 1), where the run
    is interrupted as a kill would interrupt it (KeyboardInterrupt)."""
    from alignlab.training import offline, train

    real_pair_batch = offline.pair_batch
    calls = {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == micro_batch:
            raise KeyboardInterrupt
        return real_pair_batch(*args)

    monkeypatch.setattr(offline, "pair_batch", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config)
    finally:
        monkeypatch.setattr(offline, "pair_batch", real_pair_batch)


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


# ------------------------------------------------------------------ a stand-in vLLM

def fake_vllm(monkeypatch, completions: list[list[int]]) -> SimpleNamespace:
    """Put a stand-in `vllm` in sys.modules (vLLM needs a CUDA GPU); it answers the i-th request of a
    generate call with completions[i % len(completions)] and records how the engine was built, what
    generate was last given, the weights loaded into it and the order of calls."""
    record = SimpleNamespace(engine=None, prompts=None, params=None, loaded=[], events=[])

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    def load_weights(weights):
        record.events.append("load_weights")
        record.loaded.append({name: tensor.clone() for name, tensor in weights})

    class LLM:
        def __init__(self, **kwargs):
            record.engine = kwargs
            runner = SimpleNamespace(model=SimpleNamespace(load_weights=load_weights))
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=runner)))

        def generate(self, prompts, sampling_params, use_tqdm=True):
            record.events.append("generate")
            record.prompts, record.params = prompts, sampling_params
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(completions[i % len(completions)]))])
                    for i in range(len(prompts))]

        def reset_prefix_cache(self):
            record.events.append("reset_prefix_cache")

    vllm = types.ModuleType("vllm")
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict  # a TypedDict in vLLM
    vllm.LLM, vllm.SamplingParams, vllm.inputs = LLM, SamplingParams, inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    return record


# ------------------------------------------------------------------ a report in a real browser

CHROMIUM = shutil.which("chromium")
# Chromium's own switches keep their hyphens: to Chromium, --no_sandbox is not --no-sandbox.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--virtual-time-budget=5000"]
# Appended to a copy of the page: once loaded, write each image's decoded size and place on the page.
IMAGE_PROBE = """<script>window.addEventListener('load', () => {
  const pre = document.createElement('pre'); pre.id = 'imgcheck';
  pre.textContent = JSON.stringify({height: document.documentElement.scrollHeight, images: [...document.images].map(
    i => {const r = i.getBoundingClientRect(); return {complete: i.complete, width: i.naturalWidth,
      height: i.naturalHeight, left: r.left + scrollX, top: r.top + scrollY, shown: [r.width, r.height]};})});
  document.body.appendChild(pre);});</script>"""


def chromium(*args, profile):
    """Run headless Chromium with a throw-away profile; return its stdout."""
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_report_in_chromium(report_html, work_dir) -> dict:
    """Load report.html in headless Chromium; assert every figure decoded and shows on a screenshot.

    Returns the probe's findings: {"height", "images": [{"width", "height", "left", "top", ...}]}.
    """
    from PIL import Image

    width = 1200
    probe_page = work_dir / "probe.html"
    probe_page.write_text(report_html.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = chromium("--dump-dom", f"--window-size={width},2000", probe_page.as_uri(), profile=work_dir / "profile")
    found = json.loads(html.unescape(re.search(r"<pre id=\"imgcheck\">(.*?)</pre>", dom, re.S).group(1)))
    images = found["images"]
    assert images and all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), images
    # Screenshot the whole page at once (window as tall as the page) and look at each figure's pixels.
    shot = work_dir / "report.png"
    chromium(f"--screenshot={shot}", f"--window-size={width},{found['height']}", report_html.as_uri(),
             profile=work_dir / "profile")
    picture = Image.open(shot).convert("RGB")
    assert picture.size == (width, found["height"])
    assert len(picture.getcolors(maxcolors=1 << 20)) > 200  # text, tables and plots, not a blank page
    for image in images:
        left, top = round(image["left"]), round(image["top"])
        box = picture.crop((left, top, left + round(image["shown"][0]), top + round(image["shown"][1])))
        # A drawn plot has axes, text, coloured marks and anti-aliasing: hundreds of colours. A missing
        # image is blank or a broken-image icon.
        assert len(box.getcolors(maxcolors=1 << 20)) > 100, image
    return found
