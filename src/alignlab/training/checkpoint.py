"""Training checkpoints without pickles: tensors as safetensors, everything else as JSON.

Every `checkpoint_steps` optimizer steps the loop writes `<run>/checkpoint-N/` (N: the step), as
TRL's Trainer names them; `save_total_limit` keeps the newest few. One holds

    the model, loadable          save_pretrained output (config.json + model.safetensors, or a LoRA
                                 run's adapter_config.json + adapter_model.safetensors) and the
                                 tokenizer: `from_pretrained(<run>/checkpoint-N)` loads it
    optimizer.safetensors + .json    the optimizer's state tensors (AdamW: exp_avg, exp_avg_sq, step), and
                                 its param groups and hyper-parameters with an index of those tensors
    scheduler.json               each registered or prepared scheduler's state_dict (plain numbers)
    rng_state_<rank>.safetensors + .json  per process: the torch CPU generator (and each CUDA device's)
                                 as uint8 tensors; Python `random` and NumPy states as JSON
    accelerator.json             accelerate's micro-batch counter (and its grad scaler, if any)
    loop_state.json              where the training loop is (`loop.LoopState`)

Resuming restores the model from the loadable files (a model whose save_pretrained renames its
tensors also gets `resume_model.safetensors`, its exact state). Loading reads these with
`safetensors` and `json` only, never `torch.load` or `pickle`, so a checkpoint directory cannot run
code. It saves what `accelerator.prepare` and `accelerator.register_for_checkpointing` know about,
as `accelerator.save_state` would.

Saving writes `checkpoint-N.tmp/`, then renames it into place (a checkpoint of that name already
there goes to `.old` first and is dropped after): a kill at any point leaves whole checkpoints
only. With several processes the main process writes the shared state, every process its own RNG
state, and all of them load.

JSON cannot say everything a state_dict holds, so values are tagged: {"__tensor__": name} (a
tensor in the companion .safetensors file), {"__tuple__": [...]} and {"__items__": [[key, value],
...]} (a dict whose keys are not all strings, e.g. the optimizer's parameter indices).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from pathlib import Path

import torch

from alignlab import atomic
from alignlab.errors import AlignlabError
from alignlab.safe_delete import remove

FORMAT = "alignlab-checkpoint/1"
LOOP_STATE = "loop_state.json"
PREFIX = "checkpoint-"
LEGACY = "checkpoint"  # an earlier alignlab's one hidden checkpoint, replaced at each save
EXACT_MODEL = "resume_model.safetensors"
_NAME = re.compile(r"checkpoint(?:-(\d+))?(\.old)?")
_TAGS = ("__tensor__", "__tuple__", "__items__")


# ---------------------------------------------------------------- state_dicts as JSON + tensors

def encode_state(value, tensors: dict[str, torch.Tensor], path: str = "state"):
    """A JSON-able copy of `value`; its tensors go to `tensors` (CPU, contiguous) under their path."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in value):
            return {k: encode_state(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__items__": [[encode_state(k, tensors, f"{path}.key{i}"), encode_state(v, tensors, f"{path}.{k}")]
                              for i, (k, v) in enumerate(value.items())]}
    raise TypeError(f"{path}: cannot checkpoint a {type(value).__name__} without pickle")


def decode_state(value, tensors: dict[str, torch.Tensor]):
    """The inverse of `encode_state`."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        return tensors[value["__tensor__"]]
    if set(value) == {"__tuple__"}:
        return tuple(decode_state(v, tensors) for v in value["__tuple__"])
    if set(value) == {"__items__"}:
        return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in value["__items__"]}
    return {k: decode_state(v, tensors) for k, v in value.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def write_state(directory: Path, name: str, state) -> None:
    """`name.json` (and `name.safetensors` when the state holds tensors)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(state, tensors)
    if tensors:
        save_file(tensors, str(directory / f"{name}.safetensors"), metadata={"format": FORMAT})
    atomic.write_json(directory / f"{name}.json", {"format": FORMAT, "tensors": bool(tensors), "state": encoded})


def read_state(directory: Path, name: str):
    from safetensors.torch import load_file

    document = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{name}.json is not an alignlab checkpoint file ({FORMAT})")
    tensors = load_file(str(directory / f"{name}.safetensors")) if document["tensors"] else {}
    return decode_state(document["state"], tensors)


# ---------------------------------------------------------------- random number generators

def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """This process's generator states: (JSON part, tensors)."""
    import numpy as np

    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    plain = {"python": {"version": version, "state": list(keys), "gauss_next": gauss},
             "numpy": {"name": name, "keys": [int(k) for k in np_keys], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    return plain, tensors


def set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    import numpy as np

    python = plain["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    numpy = plain["numpy"]
    np.random.set_state((numpy["name"], np.array(numpy["keys"], dtype=np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])


# ---------------------------------------------------------------- saving and loading a checkpoint

def _stateful(accelerator) -> tuple[list, list, list]:
    """The models, optimizers and schedulers (prepared or registered) a checkpoint covers."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED,
                                        DistributedType.MEGATRON_LM):
        raise AlignlabError(f"checkpoints support single-device and DDP runs, not {accelerator.distributed_type}; "
                            "set checkpoint_steps 0")
    schedulers = list(accelerator._schedulers) + list(accelerator._custom_objects)
    return list(accelerator._models), list(accelerator._optimizers), schedulers


def _indexed(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


def save(accelerator, directory: Path, loop_state: dict, tokenizer=None) -> None:
    """Write a checkpoint at `directory` (with `tokenizer`, when given), replacing one already there
    whole (see the module docstring)."""

    directory = Path(directory)
    staging = directory.with_name(f"{directory.name}.tmp")
    previous = directory.with_name(f"{directory.name}.old")
    is_main = accelerator.is_main_process
    models, optimizers, schedulers = _stateful(accelerator)
    try:
        if is_main:
            remove(staging, staging.parent)  # a half-written one from a killed save
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        plain, tensors = rng_state()
        rank = accelerator.process_index
        from safetensors.torch import save_file

        save_file(tensors, str(staging / f"rng_state_{rank}.safetensors"), metadata={"format": FORMAT})
        atomic.write_json(staging / f"rng_state_{rank}.json", {"format": FORMAT, **plain})
        if is_main:
            for i, model in enumerate(models):
                _save_model(accelerator, model, staging, i)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            for i, optimizer in enumerate(optimizers):
                write_state(staging, _indexed("optimizer", i), optimizer.state_dict())
            for i, scheduler in enumerate(schedulers):
                write_state(staging, _indexed("scheduler", i), scheduler.state_dict())
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            write_state(staging, "accelerator", {"step": accelerator.step, "processes": accelerator.num_processes,
                                                 "scaler": scaler})
            atomic.write_json(staging / LOOP_STATE, loop_state)  # last: the checkpoint is complete
    except Exception as err:
        failure = err if isinstance(err, OSError) else atomic.disk_error(err)
        if failure is None:
            raise
        with contextlib.suppress(OSError):
            remove(staging, staging.parent)
        reason = failure.strerror or str(failure)
        raise atomic.WriteError(f"{staging}: cannot write the checkpoint ({reason}); free disk space and rerun "
                                "with --resume (the last complete checkpoint is kept)", staging, failure.errno,
                                reason) from None
    accelerator.wait_for_everyone()
    if is_main:
        if directory.exists():
            os.replace(directory, previous)
        os.replace(staging, directory)
        remove(previous, previous.parent)
    accelerator.wait_for_everyone()


def _save_model(accelerator, model, directory: Path, i: int) -> None:
    """The first model as save_pretrained writes it (loadable; its exact state too when save_pretrained
    renames tensors, see `_round_trips`); any further one as its exact state only."""
    from safetensors.torch import save_model

    unwrapped = accelerator.unwrap_model(model)
    if i == 0 and hasattr(unwrapped, "save_pretrained"):
        unwrapped.save_pretrained(directory, state_dict=accelerator.get_state_dict(model), is_main_process=True,
                                  safe_serialization=True)
        if _is_peft(unwrapped) or _round_trips(unwrapped, directory):
            return
    save_model(unwrapped, str(directory / (EXACT_MODEL if i == 0 else f"{_indexed('model', i)}.safetensors")),
               metadata={"format": FORMAT})


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def _pretrained_weights(directory: Path) -> list[Path]:
    """The weight files save_pretrained wrote: model.safetensors, or the shards its index lists."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [directory / name for name in sorted(set(shards))]
    return [directory / "model.safetensors"]


def _round_trips(model, directory: Path) -> bool:
    """Whether the saved weights name exactly the model's tensors (tied copies aside), so that
    `_restore_pretrained` restores the model from them."""
    from safetensors import safe_open

    saved = set()
    for path in _pretrained_weights(directory):
        with safe_open(str(path), framework="pt") as weights:
            saved.update(weights.keys())
    state = model.state_dict()
    if not saved <= state.keys():
        return False
    present = {state[k].data_ptr() for k in saved}
    return all(state[k].data_ptr() in present for k in state.keys() - saved)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"{PREFIX}{step}"


def saved(run_dir: Path) -> list[tuple[int, Path]]:
    """The run's complete checkpoints, oldest first, as (step, directory): `checkpoint-N` (or its
    `.old`, after a kill between save's two renames) and an earlier alignlab's `checkpoint`."""
    found: dict[int, Path] = {}
    for path in Path(run_dir).glob("checkpoint*"):
        name = _NAME.fullmatch(path.name)
        if name is None or not (path / LOOP_STATE).is_file():
            continue
        try:
            step = int(name[1]) if name[1] else int(json.loads((path / LOOP_STATE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if step not in found or not name[2]:
            found[step] = path
    return sorted(found.items())


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of the run, which `--resume` continues from."""
    found = saved(run_dir)
    return found[-1][1] if found else None


def prune(run_dir: Path, keep: int | None) -> None:
    """Keep the newest `keep` checkpoints (all when None) and drop half-written ones (`.tmp`)."""
    run_dir = Path(run_dir)
    for path in run_dir.glob(f"{PREFIX}*.tmp"):
        remove(path, run_dir)
    for _, path in saved(run_dir)[:-keep] if keep else []:
        remove(path, run_dir)
        remove(path.with_name(f"{path.name}.old"), run_dir)


def load(accelerator, candidate: Path) -> dict:
    """Restore the whole checkpoint `candidate` (one that `latest` found) into the accelerator's
    models, optimizers, schedulers and this process's RNGs; return its loop state."""
    try:
        _restore(accelerator, candidate)
        return json.loads((candidate / LOOP_STATE).read_text(encoding="utf-8"))
    except AlignlabError:
        raise
    except Exception as err:  # a foreign, damaged or mismatched checkpoint: never half-used
        raise AlignlabError(f"{candidate}: cannot resume from this checkpoint ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); rerun without --resume "
                            "to start over") from None


def _restore(accelerator, directory: Path) -> None:
    from safetensors.torch import load_file, load_model

    models, optimizers, schedulers = _stateful(accelerator)
    recorded = read_state(directory, "accelerator")
    if recorded["processes"] != accelerator.num_processes:
        raise AlignlabError(f"{directory}: the checkpoint was written by {recorded['processes']} processes, "
                            f"this run has {accelerator.num_processes}; resume with the same number")
    for i, model in enumerate(models):
        unwrapped = accelerator.unwrap_model(model)
        if i == 0 and (directory / EXACT_MODEL).is_file():
            load_model(unwrapped, str(directory / EXACT_MODEL), strict=True)
        elif i == 0 and (directory / "adapter_config.json").is_file():
            _restore_adapter(unwrapped, directory)
        elif i == 0 and (directory / "config.json").is_file():
            _restore_pretrained(unwrapped, directory)
        else:  # a further model, or an earlier alignlab's checkpoint: the exact state
            load_model(unwrapped, str(directory / f"{_indexed('model', i)}.safetensors"), strict=True)
    for i, optimizer in enumerate(optimizers):
        optimizer.load_state_dict(read_state(directory, _indexed("optimizer", i)))
    for i, scheduler in enumerate(schedulers):
        scheduler.load_state_dict(read_state(directory, _indexed("scheduler", i)))
    accelerator.step = recorded["step"]
    if accelerator.scaler is not None and recorded["scaler"] is not None:
        accelerator.scaler.load_state_dict(recorded["scaler"])
    rank = accelerator.process_index
    plain = json.loads((directory / f"rng_state_{rank}.json").read_text(encoding="utf-8"))
    set_rng_state(plain, load_file(str(directory / f"rng_state_{rank}.safetensors")))


def _restore_pretrained(model, directory: Path) -> None:
    """The model's tensors from save_pretrained's files; a tensor they lack must be tied to one they hold."""
    from safetensors.torch import load_file

    tensors = {}
    for path in _pretrained_weights(directory):
        tensors.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    state = model.state_dict()
    present = {state[k].data_ptr() for k in tensors if k in state}
    untied = [k for k in missing if state[k].data_ptr() not in present]
    if unexpected or untied:
        raise ValueError(f"its weights do not match the model ({len(unexpected)} unknown tensors, "
                         f"{len(untied)} missing, e.g. {(unexpected or untied)[0]})")


def _restore_adapter(model, directory: Path) -> None:
    """A LoRA model's trained tensors from its adapter files (the frozen base is the model's own)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
    absent = [k for k in loaded.missing_keys if "lora_" in k or "modules_to_save" in k]
    if loaded.unexpected_keys or absent:
        raise ValueError(f"the adapter does not fit the model (e.g. {(loaded.unexpected_keys or absent)[0]})")


def disk_refused(run_dir: Path, full: OSError, half_written: tuple[str, ...]) -> atomic.WriteError:
    """The error for a disk that refused a write during training (full, over quota, read-only), after
    freeing what the run cannot use: the whole run directory when no checkpoint was complete (nothing
    to resume from), else its `half_written` final outputs and half-written checkpoints, keeping the
    complete checkpoints for --resume. `run_dir` is the run's own partial directory (alignlab's
    marker is in it)."""
    reason = full.strerror or str(full)
    kept = latest(run_dir)
    if kept is None:
        remove(run_dir, run_dir.parent)
        advice = f"nothing was kept (no checkpoint was complete; {run_dir} is removed); free disk space and run again"
    else:
        for name in half_written:
            remove(run_dir / name, run_dir)
        prune(run_dir, None)
        step = json.loads((kept / LOOP_STATE).read_text(encoding="utf-8")).get("step")
        advice = (f"the last complete checkpoint (step {step}) is kept in {kept}: free disk space and rerun with "
                  f"--resume, or delete {run_dir} to start over")
    return atomic.WriteError(f"{run_dir}: training stopped, the disk refused a write ({reason}); {advice}",
                             run_dir, full.errno, reason)
