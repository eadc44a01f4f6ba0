"""A training-free detector to bound trained models by: the squared distance of each test sample to the
mean of the training normals. An autoencoder that detects no better than this has learnt nothing the
mean image does not already hold."""

from sklearn.metrics import roc_auc_score

from src.data.datamodule import OneClassDataModule


def distance_to_mean_auroc(datamodule: OneClassDataModule) -> float:
    """Test AUROC of ``||x - mean(train)||^2`` on ``datamodule``'s own split."""
    datamodule.setup("fit")
    datamodule.setup("test")
    mean = datamodule.data_train.x.float().mean(0) / 255
    x = datamodule.data_test.x.float() / 255
    return float(roc_auc_score(datamodule.data_test.y.numpy(), ((x - mean) ** 2).sum(1).numpy()))
