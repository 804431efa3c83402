"""The run directory a training run writes, laid out as TRL's `output_dir` is: the final model (or
LoRA adapter) with its tokenizer at the run's root, so that `AutoModelForCausalLM.from_pretrained(OUT)`
(and for an adapter `AutoPeftModelForCausalLM.from_pretrained(OUT)`) loads it, `checkpoint-N/`
folders (checkpoint.py) and, with `report_to tensorboard`, the logs in `tracking/`.

`model/` holds the same files for the code and scripts that read `OUT/model`: hard links, so the
weights are on disk once (a filesystem without hard links gets copies, with a warning). Beside
them: config.yaml, metrics.jsonl, train_summary.json, snapshots/ and, with save_merged,
model-merged/. The run is written to a hidden `.NAME.partial` directory and renamed into place
when training finishes, so a failed or killed run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from pathlib import Path

from alignlab import atomic
from alignlab.config import OptimConfig, dump_yaml
from alignlab.errors import AlignlabError
from alignlab.output_dirs import mark, marked_kind
from alignlab.safe_delete import remove
from alignlab.training import checkpoint
from alignlab.training.tracking import TRACKING

log = logging.getLogger(__name__)

MODEL = "model"
MERGED = "model-merged"
SNAPSHOTS = "snapshots"


def save_snapshot(run_dir: Path, accelerator, model, point: dict) -> None:
    """The model as it is now (a LoRA run's adapter), with where training stands, written whole or
    not at all. Every process must call it (see `save_run`); the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    (run_dir / SNAPSHOTS).mkdir(exist_ok=True)
    with atomic.staged_dir(run_dir / SNAPSHOTS / f"step-{point['step']:06d}") as staged:
        write_model(accelerator, model, state_dict, staged)
        atomic.write_json(staged / "snapshot.json", point)


def write_model(accelerator, model, state_dict: dict, directory: Path) -> None:
    """save_pretrained of the unwrapped model with the gathered weights, as safetensors: the full
    model, or a LoRA model's adapter (adapter_config.json + adapter_model.safetensors)."""
    accelerator.unwrap_model(model).save_pretrained(directory, state_dict=state_dict, is_main_process=True,
                                                    safe_serialization=True)


def save_run(run_dir: Path, accelerator, model, tokenizer, config: OptimConfig, summary: dict) -> None:
    """The model (with its tokenizer; a LoRA run's adapter) at the run's root and in model/, with
    save_merged the merged weights in model-merged/, config.yaml and train_summary.json. Every
    process must call it: under FSDP or DeepSpeed ZeRO-3 the weights are sharded over the processes
    and get_state_dict gathers them, a collective that hangs unless all reach it. Only the main
    process writes."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    write_model(accelerator, model, state_dict, run_dir / MODEL)
    tokenizer.save_pretrained(run_dir / MODEL)
    link_files(run_dir / MODEL, run_dir)
    if config.use_peft and config.save_merged:
        from alignlab.models.loading import load_causal_lm

        # Merged as `load_causal_lm` merges an adapter directory: what evaluation would use.
        merged = load_causal_lm(str(run_dir / MODEL), config.dtype, config.trust_remote_code)
        merged.save_pretrained(run_dir / MERGED, safe_serialization=True)
        tokenizer.save_pretrained(run_dir / MERGED)
    atomic.write_text(run_dir / "config.yaml", dump_yaml(config))
    atomic.write_json(run_dir / "train_summary.json", summary)
    remove(run_dir / checkpoint.LEGACY, run_dir)  # an earlier alignlab's hidden checkpoint, when resumed


def link_files(source: Path, target: Path) -> None:
    """Every file under `source` also at its place under `target`, as a hard link (a copy where the
    filesystem has none)."""
    for path in sorted(source.rglob("*")):
        placed = target / path.relative_to(source)
        if path.is_dir():
            placed.mkdir(exist_ok=True)
            continue
        if placed.exists() or placed.is_symlink():
            placed.unlink()
        try:
            os.link(path, placed)
        except OSError as err:
            if atomic.disk_error(err) is not None:
                raise
            log.warning("%s: cannot hard-link %s here (%s); copying it", target, path.name, err.strerror or err)
            shutil.copy2(path, placed)


def model_files(run_dir: Path) -> list[str]:
    """The names at the run's root that `save_run` links from model/ (to clear a half-written run)."""
    if not (run_dir / MODEL).is_dir():
        return []
    return [p.name for p in (run_dir / MODEL).iterdir() if p.name not in (MODEL, MERGED, "config.yaml")]


def where_to_look(config: OptimConfig, out: Path) -> str:
    """One line for the end of a run: where its model is and the command that opens its tracker."""
    line = f"model: {out} (from_pretrained loads it; also in {out / MODEL})"
    if config.report_to == "tensorboard":
        line += f"; logs: tensorboard --logdir {out / TRACKING}"
    elif config.report_to == "mlflow":
        line += "; logs: mlflow ui (or the server MLFLOW_TRACKING_URI names)"
    elif config.report_to == "wandb":
        line += f"; logs: the wandb run {config.run_name or out.name} of project alignlab"
    return line


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


@contextlib.contextmanager
def run_directory(out: Path, accelerator, config: OptimConfig):
    """Training writes into a hidden `.NAME.partial` beside `out`, renamed to `out` when it ends.

    A killed run leaves only the partial directory (with its checkpoints), which `resume`
    continues from; it must have been started with the same configuration.
    """
    partial = partial_dir(out)
    resolved = dump_yaml(dataclasses.replace(config, resume=False))
    if accelerator.is_main_process:
        if config.resume and (partial / "config.yaml").exists():
            if (partial / "config.yaml").read_text() != resolved:
                raise AlignlabError(f"{partial}: cannot resume: that run was started with a different "
                                    "configuration (compare its config.yaml); rerun without --resume to start over")
        elif partial.exists():
            if marked_kind(partial) is None:
                raise AlignlabError(f"{partial}: exists but was not created by alignlab; move it away, then "
                                    "run again")
            remove(partial, partial.parent)
        partial.mkdir(parents=True, exist_ok=True)
        mark(partial, "training run")
        atomic.write_text(partial / "config.yaml", resolved)
    accelerator.wait_for_everyone()
    try:
        yield partial
    except Exception as err:
        full = atomic.disk_error(err)
        if full is None or not accelerator.is_main_process:
            raise
        raise checkpoint.disk_refused(partial, full, half_written=(*model_files(partial), MODEL, MERGED)) from None
    if accelerator.is_main_process:
        atomic.apply_umask(partial)
        if out.exists() or out.is_symlink():
            remove(out, out.parent)  # claim_run_dir allowed it: empty, or alignlab's own with --overwrite
        os.replace(partial, out)
