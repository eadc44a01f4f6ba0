"""How the DataModule's in-memory splits are batched: by index tensors, and resumable mid-epoch."""

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler


class InMemoryBatches(Dataset):
    """Samples held in memory and batched by index: uint8 pixels, scaled to [0, 1] one batch at a time,
    or float32 features, handed over raw (the model standardises them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y  # (N, D) uint8 or float32, (N,) int64

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0][0], self.y[i]

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        x = self.x[idx]
        return (x.float().div_(255) if x.dtype == torch.uint8 else x), self.y[idx]  # (B, D) float32, (B,)


class TensorBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose batches are index tensors cut from one permutation, drawn as
    ``RandomSampler`` draws it (seeded runs shuffle as with a plain ``DataLoader``); other samplers (DDP's)
    are batched as they come. It keeps the random state each epoch's order came from, so that
    ``resume_at`` can give a resumed run the very batches a stopped one had left of its epoch.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.order_state: torch.Tensor | None = None  # the generator state this epoch's order came from
        self.pending_resume: tuple[torch.Tensor | None, int] | None = None

    def resume_at(self, order_state: torch.Tensor | None, batches_done: int) -> None:
        self.pending_resume = (order_state, batches_done)

    def __iter__(self):
        state, skip = self.pending_resume or (None, 0)
        self.pending_resume = None
        batches = self.epoch_order(state).split(self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        yield from batches[skip:]

    def epoch_order(self, state: torch.Tensor | None) -> torch.Tensor:
        """This epoch's order, drawn as ``RandomSampler`` draws it, or from generator ``state``."""
        sampler = self.sampler
        n = len(sampler.data_source) if type(sampler) is RandomSampler else -1
        if n < 0 or sampler.replacement or sampler.num_samples != n:
            return torch.as_tensor(list(sampler), dtype=torch.int64)
        generator = sampler.generator
        if generator is None:  # as ``RandomSampler.__iter__`` draws it
            generator = torch.Generator()
            if state is None:
                generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        if state is not None:
            generator.set_state(state)
        self.order_state = generator.get_state()
        return torch.randperm(n, generator=generator)


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` that a mid-epoch checkpoint records (Lightning's stateful-loader
    interface, ``state_dict``/``load_state_dict``), so a resumed run finishes that epoch on the very
    batches and random numbers it would have had. ``epoch_position``: Lightning's count of the epoch's
    batches trained on, and of the batches in it.
    """

    def __init__(self, *args, epoch_position: Callable[[], tuple[int, float]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_position = epoch_position
        self.resuming = False

    def state_dict(self) -> dict[str, Any]:
        done, total = self.epoch_position()
        if done == 0 or done >= total:  # between epochs: the next one draws its order afresh
            return {}
        return {"batches_done": done, "order_state": self.batch_sampler.order_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.batch_sampler.resume_at(state_dict["order_state"], state_dict["batches_done"])
            self.resuming = True

    def __iter__(self):
        return self.batches_of_epoch()

    def batches_of_epoch(self):
        # A generator, so the DataLoader's iterator is made when the first batch is asked for, not when
        # Lightning calls ``iter``: making one draws a seed from torch's generator, and Lightning makes
        # one it never uses when it resumes from a checkpoint saved between validation and the epoch's
        # end (``val_check_interval`` < 1).
        resuming, self.resuming = self.resuming, False
        rng = torch.get_rng_state()
        iterator = super().__iter__()
        if resuming:  # the stopped run drew that seed at the start of the epoch, before its checkpoint
            torch.set_rng_state(rng)
        yield from iterator


def as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``InMemoryBatches.__getitems__`` already returns a whole batch: nothing left to collate."""
    return batch
