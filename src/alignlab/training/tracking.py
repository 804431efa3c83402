"""Experiment tracking (`report_to`) through accelerate's trackers: what the tracker is told about
a run (`tracker_config`) and how long its run stays open (`tracking`). The shared loop (loop.py)
logs every logged optimizer step to it (TRL's rewards/... and logps/... among its numbers) and every
evaluation (its eval_... numbers) at its step."""

from __future__ import annotations

import contextlib
from pathlib import Path

from alignlab.config import OptimConfig

TRACKING = "tracking"  # the run directory's folder of tracker logs (tensorboard)
TRACKER_PROJECT = "alignlab"  # the project (wandb) or experiment (mlflow) every run is logged under


def tracker_config(config: OptimConfig) -> dict:
    """The resolved configuration as trackers take it: one level of names (`params.beta`), each
    value a number, text, true/false or None (a list becomes comma-separated text)."""
    flat = {}

    def add(name: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}.{key}" if name else str(key), item)
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value

    add("", config.to_dict())
    return flat


@contextlib.contextmanager
def tracking(config: OptimConfig, accelerator, resumed_step: int):
    """The `report_to` tracker's run, open while the loop trains and closed however it ends.

    Closed with each tracker's `finish`, not `accelerator.end_training()`: accelerate 1.16's
    end_training also destroys the torch.distributed process group, which the trainers still use
    after `fit` (barriers, the reward model's held-out accuracy). A resumed run's tensorboard
    writer hides the steps the killed run logged after its checkpoint (`purge_step`), as
    metrics.jsonl drops their lines.
    """
    if config.report_to == "none":
        yield
        return
    name = config.run_name or Path(config.out).name
    if config.report_to == "wandb" and accelerator.is_main_process:
        Path(accelerator.logging_dir).mkdir(parents=True, exist_ok=True)  # wandb.init wants its dir to exist
    settings = {"tensorboard": {"purge_step": resumed_step + 1} if resumed_step else {},
                "wandb": {"name": name, "dir": accelerator.logging_dir},
                "mlflow": {"run_name": name}}
    # tensorboard writes to <logging_dir>/<project>: the run's name there, the shared project elsewhere.
    project = name if config.report_to == "tensorboard" else TRACKER_PROJECT
    accelerator.init_trackers(project, config=tracker_config(config),
                              init_kwargs={config.report_to: settings[config.report_to]})
    try:
        yield
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers = []
