"""hubsets.loader as the training DataLoader of transformers' Trainer and TRL's SFTTrainer: a few steps of a tiny
randomly initialised LLaVA built here, checkpoints that carry the loader's state, and a resume (with another
worker count) that continues the very stream and ends at the very weights of the uninterrupted run.

A VLM rather than a text LM: the point is the image path (processor= in the loader) under both trainers, and
a 70k-parameter LLaVA steps in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from loader_fixtures import photo_jpeg, simple_repo
from processor_fixtures import llava_processor, tiny_llava
from transformers import LlavaForConditionalGeneration, Trainer, TrainingArguments

import hubsets
from hubsets.loader import Processing
from hubsets.loader.trainer import STATE_FILE, LoaderTrainerMixin

ROWS, BATCH = 40, 4
"""10 batches an epoch: 14 steps cross an epoch boundary, before and after the resume."""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = [photo_jpeg(40 + 9 * k, 34 + 5 * k, k) for k in range(4)]
    return simple_repo(tmp_path_factory.mktemp("train"), ROWS, images=lambda i: [images[i % 4]], row_group_size=8)


def _recording(base: type) -> type:
    """`base` with the mixin, recording each step's row ids (kept by the loader, popped before the model)."""

    class Recording(LoaderTrainerMixin, base):  # type: ignore[misc, valid-type]
        seen: list[list[str]]

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.seen.append(inputs.pop("id"))
            return super().training_step(model, inputs, *args, **kwargs)

    return Recording


def _loader(repo: Path, processor: Any, workers: int) -> Any:
    return hubsets.loader(repo, processor=Processing(processor, keep=("id",)), batch_size=BATCH, seed=7,
                          num_workers=workers)


def _args(out: Path, steps: int, **extra: Any) -> dict[str, Any]:
    return dict(output_dir=str(out), max_steps=steps, save_steps=5, per_device_train_batch_size=BATCH,
                learning_rate=1e-2, logging_steps=100, report_to=[], use_cpu=True, seed=0,
                save_only_model=False, disable_tqdm=True, **extra)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads' spin-waits made a step of this tiny model 10x
    slower (0.5 s against 0.056 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(cls: type, config: Any, repo: Path, out: Path, steps: int, *, workers: int = 0,
           resume: str | None = None, **extra: Any) -> tuple[Any, list[list[str]]]:
    processor = llava_processor()
    # transformers 5.24's Trainer resumes a LLaVA checkpoint with load_state_dict(strict=False) on keys that
    # save_pretrained wrote in the legacy layout, so it loads no weight (only a warning); from_pretrained
    # converts them back
    model = LlavaForConditionalGeneration.from_pretrained(resume) if resume else tiny_llava(processor)
    trainer = cls(model=model, args=config(**_args(out, steps)), train_loader=_loader(repo, processor, workers),
                  **extra)
    trainer.seen = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer, trainer.seen


def _params(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_trainer_resumes_the_stream_exactly(repo: Path, tmp_path: Path) -> None:
    cls = _recording(Trainer)
    whole, seen = _train(cls, TrainingArguments, repo, tmp_path / "a", 14)
    assert len(seen) == 14 and all(len(ids) == BATCH for ids in seen)
    epoch = [i for ids in seen[:10] for i in ids]
    assert sorted(epoch) == sorted(f"toy/{('laion', 'wit', 'wiki')[i % 3]}/{i}" for i in range(ROWS))
    assert (tmp_path / "a" / "checkpoint-5" / STATE_FILE).is_file()
    # resume from step 5 with two workers instead of none: the same batches, in order, across the epoch end
    resumed, after = _train(cls, TrainingArguments, repo, tmp_path / "a", 14, workers=2,
                            resume=str(tmp_path / "a" / "checkpoint-5"))
    assert after == seen[5:]
    assert resumed.state.global_step == 14
    ours, theirs = _params(resumed), _params(whole)
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in theirs)


def test_resume_needs_the_loader_state(repo: Path, tmp_path: Path) -> None:
    cls = _recording(Trainer)
    trainer, _ = _train(cls, TrainingArguments, repo, tmp_path, 5)
    (tmp_path / "checkpoint-5" / STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="restart the data from the beginning"):
        trainer.train(resume_from_checkpoint=True)  # the last checkpoint in output_dir: checkpoint-5
    fresh = cls(model=trainer.model, args=TrainingArguments(**_args(tmp_path / "none", 1)),
                train_loader=trainer.train_loader)
    with pytest.raises(ValueError, match="no checkpoint found"):
        fresh.train(resume_from_checkpoint=True)


def test_sft_trainer_resumes_the_stream_exactly(repo: Path, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cls = _recording(SFTTrainer)
    # SFTTrainer insists on a dataset; a one-row stand-in (images => a VLM dataset, prepared on the fly) is never read
    stand_in = Dataset.from_list([{"messages": [{"role": "user", "content": "x"}], "images": []}])
    extra = {"train_dataset": stand_in, "processing_class": llava_processor()}
    config = lambda **kw: SFTConfig(max_length=None, gradient_checkpointing=False, **kw)  # noqa: E731
    whole, seen = _train(cls, config, repo, tmp_path / "s", 7, **extra)
    _, after = _train(cls, config, repo, tmp_path / "s", 7, resume=str(tmp_path / "s" / "checkpoint-5"), **extra)
    assert len(seen) == 7 and after == seen[5:]
    assert whole.state.log_history is not None
