import gzip
import logging
import math
import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from torchvision.datasets.utils import extract_archive

from src.data.datamodule import (
    NoTrainingBatchError,
    OneClassDataModule,
    SplitTooSmallError,
    resolve_anomaly_classes,
)
from src.data.loaders import TensorBatchSampler
from src.data.sources import DatasetNotFoundError, class_names, load_digits, load_source
from src.data.splits import mix, one_class_split
from tests.helpers.idx import write_fake_mnist


def emnist_dm(root: Path, **kwargs) -> OneClassDataModule:
    dm = OneClassDataModule("emnist", root=str(root), split="byclass", **kwargs)
    dm.setup("fit")
    return dm


def anomaly_share(ds) -> float:
    return ds.y.float().mean().item()


def test_train_holds_no_anomaly_and_val_test_hold_the_ratio(fake_emnist) -> None:
    root, _ = fake_emnist
    dm = emnist_dm(root, anomaly_class=[0, 24, 50], anomaly_ratio=0.35)
    assert len(dm.data_train) > 0 and dm.data_train.y.sum() == 0
    for ds in (dm.data_val, dm.data_test):
        assert anomaly_share(ds) == pytest.approx(0.35, abs=1 / len(ds))
    # val holds held-out *train* normals: none of them are in train
    train_rows = {bytes(r.numpy()) for r in dm.data_train.x}
    assert not any(bytes(r.numpy()) in train_rows for r in dm.data_val.x)


def test_natural_ratio_keeps_the_whole_test_split(fake_emnist) -> None:
    root, raw = fake_emnist
    dm = emnist_dm(root, anomaly_class=0, anomaly_ratio=None)
    assert len(dm.data_test) == len(raw["test"][1])
    assert anomaly_share(dm.data_test) == pytest.approx(1 / 62)


def test_batches_are_flat_upright_floats_in_unit_range(fake_emnist) -> None:
    root, raw = fake_emnist
    dm = emnist_dm(root, batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 784) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    images = x.reshape(-1, 28, 28)
    assert (images[:, :3, :] == 1.0).all()  # the bright bar is on top: upright, not transposed
    upright = {bytes(img.reshape(-1)) for img in raw["train"][0]}
    assert all(bytes(r.numpy()) in upright for r in dm.data_train.x)


def test_emnist_decodes_to_the_upright_images_in_file_order(fake_emnist) -> None:
    root, raw = fake_emnist
    src = load_source("emnist", root, "byclass", download=False)
    decoded = ((src.x_train, src.y_train, raw["train"]), (src.x_test, src.y_test, raw["test"]))
    for x, y, (upright, labels) in decoded:
        assert torch.equal(x, torch.from_numpy(upright.reshape(len(upright), -1)))
        assert torch.equal(y, torch.from_numpy(labels).long())


def test_split_is_deterministic_for_a_seed(fake_emnist) -> None:
    root, _ = fake_emnist
    a, b, c = (emnist_dm(root, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.data_val.x, b.data_val.x) and torch.equal(a.data_test.x, b.data_test.x)
    assert not torch.equal(a.data_val.x, c.data_val.x)


@pytest.mark.parametrize(
    ("dataset", "named", "first_file"),
    [
        ("emnist", "emnist (split 'byclass') was", "EMNIST/raw/emnist-byclass-train-images-idx3-ubyte"),
        ("mnist", "mnist was", "MNIST/raw/train-images-idx3-ubyte"),  # no split: MNIST has none
    ],
)
def test_missing_files_give_a_clear_error(tmp_path: Path, dataset: str, named: str, first_file: str) -> None:
    dm = OneClassDataModule(dataset, root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert msg.startswith(f"{named} not found under data.root={str(tmp_path)!r}")
    assert str(tmp_path / first_file) in msg
    assert "data=digits" in msg


def test_failed_download_gives_the_same_clear_error(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    dm = OneClassDataModule("emnist", root=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError, match="download failed") as err:
        dm.prepare_data()
    assert "data=digits" in str(err.value)


def test_download_fills_the_folder_the_decode_reads(tmp_path: Path, monkeypatch) -> None:
    served = tmp_path / "served"
    raw = write_fake_mnist(served, "MNIST", per_class=(6, 2))
    for path in (served / "MNIST" / "raw").iterdir():  # what the mirrors hold: gzipped IDX files
        path.with_name(f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))

    def fetch(url: str, download_root: str, filename: str, md5: str) -> None:
        """torchvision's download, with the network's part (the fetch) from local files."""
        shutil.copy(served / "MNIST" / "raw" / filename, Path(download_root) / filename)
        extract_archive(str(Path(download_root) / filename))

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", fetch)
    dm = OneClassDataModule("mnist", root=str(tmp_path / "data"), download=True, anomaly_class=0)
    dm.prepare_data()
    assert (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    dm.setup("fit")
    upright = {bytes(img.reshape(-1)) for img in raw["train"][0]}
    assert len(dm.data_train) > 0 and all(bytes(r.numpy()) in upright for r in dm.data_train.x)


def test_anomaly_classes_by_label_name_or_list() -> None:
    names = class_names("emnist", "byclass")
    assert resolve_anomaly_classes(0, names) == [0]
    assert resolve_anomaly_classes("O", names) == [24]
    assert resolve_anomaly_classes("o", names) == [50]
    assert resolve_anomaly_classes(["0", "O", "o"], names) == [0, 24, 50]
    assert resolve_anomaly_classes([50, 0, 24], names) == [0, 24, 50]
    with pytest.raises(ValueError, match=r"data.anomaly_class='\?'"):
        resolve_anomaly_classes("?", names)
    with pytest.raises(ValueError, match="data.anomaly_class=62") as err:
        resolve_anomaly_classes(62, names)
    assert "data.anomaly_class=[0,61]." in str(err.value)  # an example that fits the data set
    with pytest.raises(ValueError, match=r"0\.\.9 .*data.anomaly_class=\[0,9\]\.$"):  # e.g. digits
        resolve_anomaly_classes(10, [str(d) for d in range(10)])


def test_unknown_split_or_dataset_is_rejected_before_loading() -> None:
    with pytest.raises(ValueError, match="data.split='bymonth'"):
        OneClassDataModule("emnist", split="bymonth")
    with pytest.raises(ValueError, match="data.dataset='cifar'"):
        OneClassDataModule("cifar")


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio_is_rejected(ratio: float) -> None:
    labels = torch.arange(10).repeat(10)
    with pytest.raises(ValueError, match="anomaly_ratio"):
        one_class_split(labels, labels, [0], anomaly_ratio=ratio, val_fraction=0.1, seed=0)


def test_mix_keeps_as_many_samples_as_the_ratio_allows() -> None:
    g = torch.Generator().manual_seed(0)
    out = mix(torch.arange(100), torch.arange(100, 110), 0.5, g)
    assert len(out) == 20 and (out >= 100).sum() == 10


@pytest.mark.parametrize(
    "dataset,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
)
def test_mnist_family_shares_the_protocol(tmp_path: Path, dataset: str, folder: str) -> None:
    write_fake_mnist(tmp_path, folder, per_class=(20, 8))
    dm = OneClassDataModule(dataset, root=str(tmp_path), anomaly_class=3, val_fraction=0.2)
    dm.setup("fit")
    assert dm.input_dim == 784 and dm.data_train.y.sum() == 0
    assert anomaly_share(dm.data_test) == pytest.approx(0.35, abs=1 / len(dm.data_test))
    x, _ = next(iter(dm.test_dataloader()))
    assert (x.reshape(-1, 28, 28)[:, :3, :] == 1.0).all()


def test_digits_are_64_dimensional_and_offline() -> None:
    dm = OneClassDataModule("digits", anomaly_class=0, batch_size=16)
    dm.setup("fit")
    x, y = next(iter(dm.val_dataloader()))
    assert dm.input_dim == 64 and x.shape[1] == 64
    assert set(y.tolist()) == {0, 1}
    assert dm.data_train.y.sum() == 0


def test_split_sizes_count_each_split_and_are_logged(fake_emnist, caplog) -> None:
    root, _ = fake_emnist
    with caplog.at_level(logging.INFO, logger="src.data.datamodule"):
        dm = emnist_dm(root, anomaly_class=[0, 24, 50], anomaly_ratio=0.35)
    n = dm.split_sizes
    assert n["train_normal"] == len(dm.data_train)
    for part, ds in (("val", dm.data_val), ("test", dm.data_test)):
        assert n[f"{part}_anomaly"] == int(ds.y.sum()) > 0
        assert n[f"{part}_normal"] == len(ds) - int(ds.y.sum()) > 0
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Split of emnist")]
    assert f"val {n['val_normal']} normal and {n['val_anomaly']} anomalous" in line
    assert f"test {n['test_normal']} normal and {n['test_anomaly']} anomalous" in line


def test_a_split_with_too_few_of_one_class_warns_naming_the_setting(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="src.data.datamodule"):
        OneClassDataModule("digits", anomaly_class=0).setup("fit")
    assert not caplog.records  # the default ratio leaves enough of both classes
    with caplog.at_level(logging.WARNING, logger="src.data.datamodule"):
        dm = OneClassDataModule("digits", anomaly_class=0, anomaly_ratio=0.99)
        dm.setup("fit")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert dm.split_sizes["test_normal"] < 10 and dm.split_sizes["val_normal"] < 10
    assert len(warned) == 2
    for part, message in zip(("val", "test"), warned, strict=True):
        assert message.startswith(f"The {part} split holds only {dm.split_sizes[f'{part}_normal']} normal")
        assert "data.anomaly_ratio=0.99" in message and "fewer than 10 normal samples" in message


def _splits(dm: OneClassDataModule) -> list[torch.Tensor]:
    return [t for ds in (dm.data_train, dm.data_val, dm.data_test) for t in (ds.x, ds.y)]


def test_shuffled_batches_are_those_of_a_plain_shuffled_dataloader(fake_emnist) -> None:
    # TensorBatchSampler cuts index tensors from the permutation RandomSampler would draw: a seeded run
    # sees exactly the batches a plain ``DataLoader(shuffle=True)`` gives, epoch after epoch.
    dm = emnist_dm(fake_emnist[0], batch_size=7)
    plain = DataLoader(dm.data_train, batch_size=7, shuffle=True, collate_fn=lambda b: b)
    batches = {}
    for name, loader in (("ours", dm.train_dataloader()), ("plain", plain)):
        torch.manual_seed(5)
        batches[name] = [torch.cat([x, y[:, None].float()], 1) for _ in range(2) for x, y in loader]
    assert len(batches["ours"]) == 2 * math.ceil(len(dm.data_train) / 7)
    assert all(torch.equal(a, b) for a, b in zip(batches["ours"], batches["plain"], strict=True))
    assert not torch.equal(batches["ours"][0], batches["ours"][len(batches["ours"]) // 2])  # reshuffled


def test_evaluation_batches_keep_the_split_order(fake_emnist) -> None:
    dm = emnist_dm(fake_emnist[0], eval_batch_size=10)
    xs = [x for x, _ in dm.val_dataloader()]
    assert [len(x) for x in xs[:-1]] == [10] * (len(xs) - 1)
    assert torch.equal(torch.cat(xs), dm.data_val.x.float() / 255)


def test_batch_sampler_batches_any_other_sampler_like_batchsampler() -> None:
    # e.g. the DistributedSampler that Lightning puts in under DDP
    sampler = DistributedSampler(range(50), num_replicas=2, rank=1, shuffle=True, seed=3)
    for drop_last in (False, True):
        ours = [b.tolist() for b in TensorBatchSampler(sampler, 6, drop_last)]
        assert ours == list(BatchSampler(sampler, 6, drop_last))


def test_under_ddp_lightning_swaps_in_its_sampler_and_keeps_ours(fake_emnist) -> None:
    # What Lightning does to a train loader under DDP: re-create the batch sampler from its saved
    # arguments, with a DistributedSampler in place of ours.
    dm = emnist_dm(fake_emnist[0], batch_size=16)
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    shard = DistributedSampler(dm.data_train, num_replicas=2, rank=1, shuffle=True, seed=0)
    updated = _update_dataloader(loader, shard)
    assert type(updated.batch_sampler) is TensorBatchSampler and updated.batch_sampler.sampler is shard
    seen = torch.cat([x for x, _ in updated])
    assert len(seen) == len(shard) and torch.equal(seen, dm.data_train.x[list(shard)].float() / 255)


def _under_ddp(dm: OneClassDataModule, rank: int, ranks: int = 2) -> Trainer:
    """``dm`` attached to a DDP trainer as rank ``rank`` of ``ranks`` sees it (not launched)."""
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    trainer.strategy.cluster_environment.set_world_size(ranks)
    trainer.strategy.cluster_environment.set_global_rank(rank)
    dm.trainer = trainer
    return trainer


def test_under_ddp_each_sample_is_scored_on_one_rank_only(fake_emnist) -> None:
    # Lightning's own sampler would repeat a sample to even out the shares, and the gathered AUROC
    # would count it twice
    dm = emnist_dm(fake_emnist[0], eval_batch_size=16)
    ranks = 4
    for data, loader_of in ((dm.data_val, dm.val_dataloader), (dm.data_test, dm.test_dataloader)):
        assert len(data) % ranks != 0  # shares of uneven sizes
        for rank in range(ranks):
            trainer = _under_ddp(dm, rank, ranks)
            loader = loader_of()
            assert not trainer._data_connector._requires_distributed_sampler(loader)  # kept as it is
            x, y = map(torch.cat, zip(*loader, strict=True))
            assert torch.equal(x, data.x[rank::ranks].float() / 255) and torch.equal(y, data.y[rank::ranks])
    dm.trainer = None
    assert len(list(dm.val_dataloader())) == math.ceil(len(dm.data_val) / 16)  # one process: every sample


def test_under_ddp_a_split_smaller_than_the_ranks_is_refused(fake_emnist) -> None:
    dm = emnist_dm(fake_emnist[0])
    _under_ddp(dm, rank=0, ranks=len(dm.data_val) + 1)
    with pytest.raises(SplitTooSmallError, match=r"The val split holds \d+ samples, fewer than the \d+ proc"):
        dm.val_dataloader()


def test_worker_processes_give_the_same_batches(fake_emnist) -> None:
    in_process = emnist_dm(fake_emnist[0], batch_size=16)
    workers = emnist_dm(fake_emnist[0], batch_size=16, num_workers=1)
    for a, b in zip(in_process.val_dataloader(), workers.val_dataloader(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(0)
    ours = [x for x, _ in in_process.train_dataloader()]
    torch.manual_seed(0)
    theirs = [x for x, _ in workers.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_drop_last_trains_on_full_batches_only(fake_emnist) -> None:
    root = fake_emnist[0]
    kept = emnist_dm(root, batch_size=32)
    dropped = emnist_dm(root, batch_size=32, drop_last=True)
    n = len(kept.data_train)
    assert n % 32 > 1  # a short last batch that the default keeps
    assert [len(x) for x, _ in kept.train_dataloader()][-1] == n % 32
    sizes = [len(x) for x, _ in dropped.train_dataloader()]
    assert sizes == [32] * (n // 32)
    # evaluation scores every sample either way
    assert sum(len(x) for x, _ in dropped.val_dataloader()) == len(dropped.data_val)
    # a last batch of one sample is dropped even without drop_last: BatchNorm cannot train on it
    one_over = emnist_dm(root, batch_size=n - 1)
    assert [len(x) for x, _ in one_over.train_dataloader()] == [n - 1]


def test_drop_last_with_a_batch_larger_than_the_split_is_refused(fake_emnist) -> None:
    root = fake_emnist[0]
    n = len(emnist_dm(root).data_train)
    with pytest.raises(NoTrainingBatchError, match=rf"data.drop_last=true with data.batch_size={n + 1} "):
        emnist_dm(root, batch_size=n + 1, drop_last=True)
    assert len(list(emnist_dm(root, batch_size=n + 1).train_dataloader())) == 1  # without it: one batch


def test_the_unimodal_protocol_keeps_one_normal_class_and_half_anomalies_from_all_others() -> None:
    dm = OneClassDataModule("digits", protocol="unimodal", normal_class=3, anomaly_ratio=0.5)
    dm.setup("fit")
    assert dm.anomaly_classes == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    train_rows, val_labels = dm.data_train.y, dm.source_rows["val"][1]
    assert (train_rows == 0).all()  # no anomaly in training ...
    source = load_digits()
    assert len(dm.data_train) + dm.split_sizes["val_normal"] == int((source.y_train == 3).sum())  # ... all 3s
    for part in ("val", "test"):
        n_normal, n_anomaly = dm.split_sizes[f"{part}_normal"], dm.split_sizes[f"{part}_anomaly"]
        assert abs(n_normal - n_anomaly) <= 1  # half and half
        labels = dm.source_rows[part][1]
        assert int((labels == 3).sum()) == n_normal
    assert set(val_labels[val_labels != 3].tolist()) <= set(dm.anomaly_classes)
    test_labels = dm.source_rows["test"][1]
    assert len(set(test_labels[test_labels != 3].tolist())) == 9  # the anomalies come from every other class


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"protocol": "unimodal"}, "the unimodal protocol needs data.normal_class"),
        ({"normal_class": 3}, "data.normal_class=3 with data.protocol=multimodal"),
        ({"protocol": "bimodal"}, "data.protocol='bimodal' is unknown"),
        ({"protocol": "unimodal", "normal_class": 12}, "data.normal_class=12 is not a class"),
        ({"protocol": "unimodal", "normal_class": list(range(10))}, "leaves no anomaly class"),
        ({"anomaly_class": list(range(10))}, "leaves no normal class"),
    ],
)
def test_protocol_settings_that_do_not_fit_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OneClassDataModule("digits", **kwargs)


def test_nap_fits_on_a_fixed_subset_of_the_training_normals_when_they_are_many() -> None:
    dm = OneClassDataModule("digits", eval_batch_size=64, seed=3)
    dm.setup("fit")
    rows = {tuple(r.tolist()) for r in dm.data_train.x}
    first, again = ([x for x, _ in dm.normal_dataloader(100)] for _ in range(2))
    assert [len(x) for x in first] == [64, 36]
    subset = torch.cat(first)
    assert torch.equal(subset, torch.cat(again))  # the same subset every time (fixed by data.seed)
    assert {tuple((r * 255).round().to(torch.uint8).tolist()) for r in subset} <= rows
    assert len({tuple(r.tolist()) for r in subset}) == len(subset) == 100  # drawn without repeats
    everything = torch.cat([x for x, _ in dm.normal_dataloader(10_000)])
    assert torch.equal(everything, dm.data_train.x.float() / 255)  # a small split whole, in its order
