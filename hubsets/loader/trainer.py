"""hubsets.loader as the training DataLoader of `transformers.Trainer` and its subclasses (TRL's `SFTTrainer`).

    from hubsets.loader.trainer import LoaderTrainerMixin
    class MyTrainer(LoaderTrainerMixin, Trainer): ...          # or (LoaderTrainerMixin, SFTTrainer)
    trainer = MyTrainer(model=model, args=args, train_loader=hubsets.loader(..., processor=processor))
    trainer.train(resume_from_checkpoint=True)

Why a mixin rather than a `train_dataset`: the Trainer would wrap a dataset in its own DataLoader and
sampler, and shard it again through accelerate, while the loader already batches, shuffles and splits by rank
itself; and a Trainer resumes by replaying (`skip_first_batches`), decoding every batch it skips, while the
loader's state resumes exactly at once. So the Trainer gets the loader as is; each checkpoint carries the
loader's state (`hubsets_loader.json`, written by every `save`), and `train(resume_from_checkpoint=...)` loads
it before training, with the Trainer's batch skipping off (`ignore_data_skip`).

Epochs: the Trainer's epoch is one pass of the loader (its length: `Loader.epoch_batches`); a pass cut short
by `max_steps` or a resume is continued by the next one, so the stream is the uninterrupted run's whatever the
checkpoints. One limit comes from the Trainer's step counting: with gradient accumulation, when a pass's batch
count is not a multiple of `gradient_accumulation_steps`, a run resumed inside an epoch makes the optimizer step
of that epoch's last, short accumulation one step later than the uninterrupted run would (same batches).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from hubsets.loader.dataset import Loader

STATE_FILE = "hubsets_loader.json"
"""The loader's state in a checkpoint folder, next to the Trainer's trainer_state.json."""


class TrainerLoader:
    """What the Trainer iterates: the loader itself, with a whole epoch's length and no `set_epoch` (the
    Trainer would call it at every epoch, and a resumed run must go on from the loaded state instead)."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return self.loader.epoch_batches


class LoaderStateCallback(TrainerCallback):
    """Writes the loader's state into every checkpoint the Trainer saves. Every rank must take part (the
    state is gathered across ranks with torch.distributed); the main process writes it."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loader_state = self.loader.state_dict()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                save_state(loader_state, folder)


def save_state(loader_state: dict[str, Any], folder: str | os.PathLike[str]) -> None:
    """Write a loader state into a checkpoint folder (atomically: a checkpoint is never half written)."""
    path = Path(folder) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(loader_state))
    os.replace(tmp, path)


def load_state(loader: Loader, folder: str | os.PathLike[str]) -> None:
    """Resume `loader` from the state in a checkpoint folder; one-line errors when it has none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no {STATE_FILE}: was it saved by a LoaderTrainerMixin trainer? "
                                "Resuming without it would restart the data from the beginning")
    loader.load_state_dict(json.loads(path.read_text()))


class LoaderTrainerMixin:
    """Put before `transformers.Trainer` (or a subclass such as `trl.SFTTrainer`) in a class's bases;
    `train_loader=` is the hubsets loader to train on. See the module docstring."""

    args: Any

    def __init__(self, *args: Any, train_loader: Loader, **kwargs: Any) -> None:
        if not isinstance(train_loader, Loader):
            raise TypeError(f"train_loader must be a hubsets.loader(...) Loader, got {type(train_loader).__name__}")
        self.train_loader = train_loader
        super().__init__(*args, **kwargs)
        self.args.ignore_data_skip = True  # the loader resumes from its state; replaying batches would repeat them
        self.add_callback(LoaderStateCallback(train_loader))  # type: ignore[attr-defined]

    def get_train_dataloader(self) -> TrainerLoader:
        return TrainerLoader(self.train_loader)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """`Trainer.train`, with the loader's state loaded from the checkpoint first (True: the last one in
        `output_dir`, as the Trainer resolves it)."""
        checkpoint = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else (
            resume_from_checkpoint or None)
        if resume_from_checkpoint is True and checkpoint is None:
            raise ValueError(f"no checkpoint found in output_dir {self.args.output_dir}")
        if checkpoint is not None:
            load_state(self.train_loader, checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, **kwargs)  # type: ignore[misc]
