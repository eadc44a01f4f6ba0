"""Per-step training values (``train/loss``, ``train/recon``, ``train/kl``, ``train/g_norm``), kept on the
device and read back to the host in blocks: for the loggers, and to stop a diverging run."""

import math

import torch


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the weights were not updated with it."""

    def __init__(self, step: int, reason: str, last_finite_g_norm: float | None) -> None:
        self.step, self.reason, self.last_finite_g_norm = step, reason, last_finite_g_norm
        super().__init__(
            f"Training diverged at step {step}: {reason} (last finite train/g_norm: {last_finite_g_norm}). "
            "Neither that update nor any later one reached the weights, and no checkpoint was saved after "
            "it: the best and last checkpoints hold the weights from before. Try gradient clipping "
            "(trainer.gradient_clip_val), a lower model.lr, or fewer layers."
        )


class StepValues:
    """The values of the training steps not yet read back.

    Lightning's ``self.log`` costs about a millisecond per key per step on CPU (each call moves its
    result object to the value's device through ``apply_to_collection``): a quarter of a small model's
    step. Per-step values need none of its epoch reduction, so they go to the loggers directly, at the
    step and cadence (``trainer.log_every_n_steps``) and with the ``epoch`` column ``self.log`` would give
    them. They reach disk at each logger's own pace (``CSVLogger`` every ``flush_logs_every_n_steps``, W&B
    and TensorBoard in the background) and when the run ends or fails, rather than with a file write every
    step as ``self.log`` does. They are not in ``trainer.callback_metrics``.
    """

    def __init__(self) -> None:
        # (step, epoch, due for the loggers, {key: 0-dim tensor on the device}) of each pending step
        self.pending: list[tuple[int, int, bool, dict[str, torch.Tensor]]] = []
        self.last_finite_g_norm: float | None = None
        self.g_norm_max = 0.0  # of the finite norms read back so far

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, step: int, epoch: int, due: bool, values: dict[str, torch.Tensor]) -> None:
        """Keep a step's values (the same keys every step) until the next ``read_back``."""
        self.pending.append((step, epoch, due, values))

    def clear(self) -> None:
        self.pending = []

    def read_back(self, loggers: list, check: bool = True) -> None:
        """Copy the pending steps' values to the host in one transfer, send the due ones to ``loggers``
        and, if ``check``, raise ``DivergedError`` at the first non-finite loss or norm (logged too)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        keys = list(pending[0][3])
        flat = torch.stack([v for *_, values in pending for v in values.values()]).tolist()
        for i, (step, epoch, due, _) in enumerate(pending):
            values = dict(zip(keys, flat[i * len(keys) : (i + 1) * len(keys)], strict=True))
            if due:
                for logger in loggers:
                    logger.log_metrics(values | {"epoch": epoch}, step=step)
            bad = [k for k in ("train/loss", "train/g_norm") if not math.isfinite(values[k])]
            if bad and check:
                raise DivergedError(step, f"{bad[0]} is {values[bad[0]]}", self.last_finite_g_norm)
            if not bad:
                self.last_finite_g_norm = values["train/g_norm"]
                self.g_norm_max = max(self.g_norm_max, self.last_finite_g_norm)
