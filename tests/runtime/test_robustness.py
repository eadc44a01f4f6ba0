import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from src.analysis.report import build_report
from src.data.datamodule import OneClassDataModule
from src.data.sources import CorruptDataError
from src.runtime.callbacks.latest_checkpoint import LatestCheckpoint
from src.runtime.callbacks.stop_on_sigterm import StopCleanlyOnSigterm
from src.runtime.ctrl_c import StopAfterStepOnCtrlC
from src.runtime.loggers import ResumableCSVLogger
from src.runtime.records import write_json_atomic
from src.train import train
from tests.conftest import REPO
from tests.helpers import md_rows
from tests.helpers.cli import run_main
from tests.helpers.idx import write_fake_emnist

ONE_JOB = ["data=digits", "trainer=cpu", "trainer.enable_progress_bar=false"]


def cli(*args: str, env: dict | None = None, timeout: int = 300, new_session: bool = False):
    """Run ``python -m src.train`` with ``args``; ``new_session``: in a process group of its own."""
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          start_new_session=new_session)  # fmt: skip


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def history(run_dir: Path) -> list[dict]:
    """The rows of a run's ``csv/metrics.csv``, each without its empty cells (as strings)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


# One uninterrupted run of digits, 3 epochs of 16 steps: what the stopped and resumed runs must equal
# (validation in 6 batches of 174 samples, so that a stop can land inside one)
RESUMABLE = [*ONE_JOB, "model=vae", "logger=csv", "trainer.max_epochs=3", "trainer.deterministic=true",
             "data.eval_batch_size=32"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The output directory of an uninterrupted run of the given arguments, run once per module."""
    runs: dict[tuple[str, ...], Path] = {}

    def run(*args: str) -> Path:
        if args not in runs:
            run_dir = tmp_path_factory.mktemp("uninterrupted")
            proc = cli(*args, f"hydra.run.dir={run_dir}")
            assert proc.returncode == 0, proc.stderr[-2000:]
            runs[args] = run_dir
        return runs[args]

    return run


def test_a_diverging_run_stops_cleanly_and_keeps_its_checkpoint(tmp_path: Path, capfd) -> None:
    nan_at_20 = ["+callbacks.fault._target_=tests.helpers.faults.NanAtStep", "+callbacks.fault.step=20"]
    status = run_main("train", *ONE_JOB, "logger=csv", "trainer.max_epochs=3", f"hydra.run.dir={tmp_path}",
                      *nan_at_20)  # fmt: skip
    assert status == 3
    out = capfd.readouterr()
    assert "Training diverged at step 20: train/loss is nan" in out.out + out.err
    m = metrics(tmp_path)
    assert m["status"] == "diverged" and m["diverged_at_step"] == 20
    assert 0 < m["last_finite_g_norm"] < float("inf")
    assert Path(m["best_checkpoint"]).is_file()  # saved at the end of epoch 0, before the NaN


def test_a_diverging_job_lets_the_sweep_go_on_and_is_reported(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    nan_at_20 = ["+callbacks.fault._target_=tests.helpers.faults.NanAtStep", "+callbacks.fault.step=20,-1"]
    status = run_main(
        "train", "--multirun", *ONE_JOB, "logger=csv", "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}",
        *nan_at_20,
    )  # fmt: skip
    assert status != 0
    df, _, _ = build_report(sweep)
    assert sorted(df.status) == ["completed", "diverged"]
    # the swept setting is the fault's step: the diverged job has its cell, it is not "missing"
    table = (
        (sweep / "report.md").read_text().split("## Test AUROC per callbacks.fault.step")[1].split("##")[0]
    )
    rows = md_rows(table)
    assert ["20", "diverged (1)"] in rows and any(r[0] == "-1" and r[1].startswith("0.") for r in rows)


def test_metrics_json_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"status": "completed", "test/auroc": 0.9})

    def crash(obj, f, **kwargs):
        f.write('{"status": "compl')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"status": "completed", "test/auroc": 0.1})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "completed", "test/auroc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_same_seed_gives_bit_identical_results_and_records_versions(make_cfg, tmp_path: Path) -> None:
    def run(seed: int, name: str) -> dict:
        cfg = make_cfg(f"seed={seed}", "trainer.deterministic=true", "trainer.max_epochs=2")
        cfg.paths.output_dir = str(tmp_path / name)
        return train(cfg)[0]

    runs = [run(0, "a"), run(0, "b")]
    other = run(1, "c")
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max"]
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]
    assert runs[0]["train/loss"] != other["train/loss"]
    prov = runs[0]["provenance"]
    assert prov["torch"] == torch.__version__ and prov["lightning"] and prov["hydra"]
    assert len(prov["git_commit"] or "") == 40


def test_the_split_follows_data_seed_not_the_training_seed() -> None:
    def val(**kwargs):
        dm = OneClassDataModule("digits", **kwargs)
        dm.setup()
        return dm.data_val.x

    torch.manual_seed(0)
    a = val(seed=0)
    torch.manual_seed(1)
    assert torch.equal(a, val(seed=0))
    assert not torch.equal(a, val(seed=1))


# val_check_interval=0.5: the checkpoint is saved at the epoch's last validation, before its epoch-end
# hooks, which the resumed run then runs (and logs) again
# (make test-full: the resume from an epoch's end that this tests with 1.0 is sigterm-in-validation's)
@pytest.mark.slow
@pytest.mark.parametrize("val_check_interval", [1.0, 0.5])
def test_a_killed_run_resumes_to_the_same_result(
    tmp_path: Path, uninterrupted, val_check_interval: float
) -> None:
    args = RESUMABLE if val_check_interval == 1.0 else [*RESUMABLE, "+trainer.val_check_interval=0.5"]
    full, killed = uninterrupted(*args), tmp_path / "killed"
    fault = ["+callbacks.fault._target_=tests.helpers.faults.KillOnce", "+callbacks.fault.step=40",
             f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*args, f"hydra.run.dir={killed}", *fault)
    assert first.returncode == -9 and not (killed / "metrics.json").exists()
    resumed = cli(*args, f"hydra.run.dir={killed}", *fault)  # the same command, run again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming from" in resumed.stdout + resumed.stderr
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "global_step"]
    assert [metrics(killed)[k] for k in keys] == [metrics(full)[k] for k in keys]
    # the history keeps the killed run's rows up to its checkpoint: the whole file is the full run's
    assert history(killed) == history(full)


@pytest.mark.parametrize("ckpt,message", [("last", "ckpt_path=last but"), ("/no/such.ckpt", "is not a file")])
def test_a_missing_checkpoint_is_a_clear_error(tmp_path: Path, ckpt: str, message: str, capfd) -> None:
    assert run_main("train", *ONE_JOB, f"ckpt_path={ckpt}", "logger=csv", f"hydra.run.dir={tmp_path}") == 2
    output = "".join(capfd.readouterr())
    assert f"ckpt_path={ckpt}" in output and message in output and "Traceback" not in output
    assert not (tmp_path / "metrics.json").exists()  # a bad setting, not a failed run


def test_a_damaged_last_checkpoint_stops_the_resume_in_one_paragraph(tmp_path: Path, capfd) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"PK\x03\x04 cut short by a kill")
    assert run_main("train", *ONE_JOB, "logger=csv", f"hydra.run.dir={tmp_path}") == 2  # resume=true finds it
    output = "".join(capfd.readouterr())
    assert f"Cannot resume from {last}" in output and "Traceback" not in output
    assert last.read_bytes() == b"PK\x03\x04 cut short by a kill"  # left for the user to look at
    assert not (tmp_path / "metrics.json").exists()


@pytest.fixture
def sigint_reaches_children():
    """A shell starts a background job (``make test &``) with SIGINT ignored, its children inherit that,
    and Python keeps an ignored SIGINT ignored: the runs under test must take Ctrl-C as a foreground
    run does. (A handled signal is reset to the default in a child, so the child's Python installs its
    KeyboardInterrupt handler.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


SIGNAL = ["+callbacks.fault._target_=tests.helpers.faults.SignalAtStep"]
SIGTERM_AT_20 = [*SIGNAL, "+callbacks.fault.step=20", "+callbacks.fault.signum=15"]
# Ctrl-C in a terminal: SIGINT to the process group, the loader worker included
CTRL_C_AT_20 = [
    *SIGNAL,
    "+callbacks.fault.step=20",
    "+callbacks.fault.signum=2",
    "+callbacks.fault.group=true",
]
SIGTERM_AT_31 = [*SIGNAL, "+callbacks.fault.step=31", "+callbacks.fault.signum=15"]  # epoch 1's last step
SIGTERM_IN_VAL = [
    *SIGNAL,
    "+callbacks.fault.step=32",
    "+callbacks.fault.val_batch=2",
    "+callbacks.fault.signum=15",
]
# the validation half-way through epoch 1 (with trainer.val_check_interval=0.5)
SIGTERM_IN_MID_EPOCH_VAL = [*SIGNAL, "+callbacks.fault.step=24", "+callbacks.fault.val_batch=2",
                            "+callbacks.fault.signum=15"]  # fmt: skip
KILL_AT_20 = ["+callbacks.fault._target_=tests.helpers.faults.KillOnce", "+callbacks.fault.step=20"]
KILL_IN_TEST = ["+callbacks.fault._target_=tests.helpers.faults.KillOnceWhileTesting"]  # after the last epoch
# a last.ckpt every 8 steps: at 8, 24, 40 (not at 16, 32, 48, epochs' last steps, before their validation)
RAE_WITH_A_WORKER = ["model=rae", "data.num_workers=1", "callbacks.last_checkpoint.every_n_train_steps=8"]


@pytest.mark.usefixtures("sigint_reaches_children")
@pytest.mark.parametrize(
    "settings,fault,exit_code,ckpt_step",
    [
        ([], SIGTERM_AT_20, 143, 21),  # preemption: stops after step 20
        pytest.param(RAE_WITH_A_WORKER, CTRL_C_AT_20, 130, 21, marks=pytest.mark.slow),  # as SIGTERM does
        pytest.param(RAE_WITH_A_WORKER, KILL_AT_20, -9, 8, marks=pytest.mark.slow),  # resumed from step 8
        # at an epoch's end the stop waits for the validation, whose last.ckpt then holds the epoch
        pytest.param([], SIGTERM_AT_31, 143, 32, marks=pytest.mark.slow),
        pytest.param([], SIGTERM_IN_VAL, 143, 32, marks=pytest.mark.slow),
        pytest.param(
            ["+trainer.val_check_interval=0.5"], SIGTERM_IN_MID_EPOCH_VAL, 143, 24, marks=pytest.mark.slow
        ),
        # the resume only tests, and still records the last epoch's loss
        pytest.param([], KILL_IN_TEST, -9, 48, marks=pytest.mark.slow),
    ],
    ids=[
        "sigterm",
        "ctrl-c",
        "sigkill",
        "sigterm-at-epoch-end",
        "sigterm-in-validation",
        "sigterm-in-mid-epoch-validation",
        "sigkill-in-test",
    ],
)
def test_a_run_stopped_mid_epoch_resumes_to_the_same_result(
    tmp_path: Path, uninterrupted, settings: list, fault: list, exit_code: int, ckpt_step: int, capfd
) -> None:
    """Stopped, then the same command again (16 steps an epoch). From the middle of an epoch the resumed
    run finishes that epoch on the batches the uninterrupted run trained on, not on a new shuffle of all
    of them, draws the same random numbers after it (the VAE draws noise every step), and ends
    bit-identical to it, history included: the loggers wrote out the steps before the checkpoint. A stop
    at an epoch's end (its last step or its validation) waits for the validation to end, and the run
    resumes from the checkpoint saved there, repeating nothing."""
    args = [*RESUMABLE, *settings]
    full, stopped = uninterrupted(*args), tmp_path / "stopped"
    fault = [*fault, f"+callbacks.fault.marker={tmp_path / 'marker'}"]
    first = cli(*args, f"hydra.run.dir={stopped}", *fault, new_session=True)
    assert first.returncode == exit_code and not (stopped / "metrics.json").exists()
    if exit_code > 0:  # a stop, not a kill: the loader worker must not fail with its parent's stop
        assert "Traceback" not in first.stdout + first.stderr
    if exit_code > 0 and ckpt_step % 16 == 0:  # stopped at an epoch's end: the log names what is kept
        assert f"{stopped / 'checkpoints' / 'last.ckpt'} holds this step; resume" in (
            first.stdout + first.stderr
        )
    ckpt = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == ckpt_step
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state.get("batches_done", 0) == ckpt_step % 16
    capfd.readouterr()
    assert run_main("train", *args, f"hydra.run.dir={stopped}", *fault) == 0  # here: no process to start
    resumed = capfd.readouterr()
    assert "not resumable" not in resumed.out + resumed.err  # Lightning's warning
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max", "global_step"]
    assert [metrics(stopped)[k] for k in keys] == [metrics(full)[k] for k in keys]
    assert history(stopped) == history(full)


def test_a_sigterm_while_testing_lets_the_test_finish_and_the_run_complete(tmp_path, uninterrupted) -> None:
    """The test after training takes seconds, and a stop inside it would leave nothing to resume but
    that test: it finishes, and the run ends as completed, with the uninterrupted run's numbers."""
    full, stopped = uninterrupted(*RESUMABLE), tmp_path / "stopped"
    fault = [*SIGNAL, "+callbacks.fault.step=-1", "+callbacks.fault.test_batch=1",
             "+callbacks.fault.signum=15", f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*RESUMABLE, f"hydra.run.dir={stopped}", *fault)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "marker").exists()  # the signal was sent
    keys = ["status", "train/loss", "val/auroc", "test/auroc", "test/auprc", "global_step"]
    assert [metrics(stopped)[k] for k in keys] == [metrics(full)[k] for k in keys]


@pytest.mark.slow
@pytest.mark.usefixtures("sigint_reaches_children")
@pytest.mark.parametrize(
    "signum,group,times,val_batch,exit_code,ckpt_step",
    [
        (15, False, 1, -1, 143, 5),  # to rank 0, which passes it on to rank 1, as a plain `kill` does
        (15, True, 1, -1, 143, 5),  # to every rank, as SLURM's preemption does
        (2, True, 1, -1, 130, 5),  # Ctrl-C: to the whole process group
        (2, True, 2, -1, 130, 4),  # Ctrl-C twice: at once, inside step 4
        (15, False, 1, 1, 143, 8),  # to the first rank at batch 1 of epoch 0's validation: after it
    ],
    ids=["sigterm-to-rank-0", "sigterm-to-all-ranks", "ctrl-c", "ctrl-c-twice", "sigterm-in-validation"],
)
def test_under_ddp_a_stop_stops_both_ranks_together_and_resumes_to_the_same_numbers(
    tmp_path,
    uninterrupted,
    signum: int,
    group: bool,
    times: int,
    val_batch: int,
    exit_code: int,
    ckpt_step: int,
) -> None:
    """Two processes on CPU (8 steps an epoch each), signalled as step 4 starts. SIGTERM, and a first
    Ctrl-C, stop both ranks after that step, as they stop one process, and the resume ends bit-identical
    to an uninterrupted run, history included. (With Lightning's own SIGTERM handling, which broadcasts
    from inside its signal handler, 8 of 10 such runs failed in gloo with "Connection reset by peer" and
    saved no checkpoint.) A second Ctrl-C stops each rank at once, wherever it is; rank 0 saves its state
    without waiting for the others (5 of 8 runs hung when it waited), and the resume ends with the same
    numbers and per-step rows (the epoch-level rows come one step later, as in one process). A SIGTERM
    during a validation, to whichever rank gets there first, stops both after it."""
    args = [*RESUMABLE, "trainer=ddp_sim"]
    full, stopped = uninterrupted(*args), tmp_path / "stopped"
    at = ["+callbacks.fault.step=8", f"+callbacks.fault.val_batch={val_batch}"] if val_batch >= 0 else [
        "+callbacks.fault.step=4"]  # fmt: skip
    # Two Ctrl-Cs are sent from rank 0, between two lines of its Python code, so that it handles the first
    # before the second arrives. Sent from a rank that rank 0 then waits for in a collective, both reach it
    # while it is inside C++ code, and Python runs its handler once for the two: one Ctrl-C, which stops
    # after the step (checkpoint at step 5), as it should (2 of 9 runs so before).
    rank = 0 if times == 2 else -1
    fault = [*SIGNAL, *at, f"+callbacks.fault.signum={signum}",
             f"+callbacks.fault.group={group}", f"+callbacks.fault.times={times}",
             f"+callbacks.fault.rank={rank}", f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*args, f"hydra.run.dir={stopped}", *fault, new_session=True, timeout=240)
    assert first.returncode == exit_code, (first.stdout + first.stderr)[-3000:]
    assert "Traceback" not in first.stdout + first.stderr
    ckpt = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == ckpt_step
    assert (
        ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0].get("batches_done", 0) == ckpt_step % 8
    )
    resumed = cli(*args, f"hydra.run.dir={stopped}", *fault, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max", "global_step"]
    assert [metrics(stopped)[k] for k in keys] == [metrics(full)[k] for k in keys]
    per_step = lambda run: [r for r in history(run) if "train/g_norm" in r]  # noqa: E731
    assert (history(stopped) == history(full)) if times == 1 else (per_step(stopped) == per_step(full))


@pytest.mark.usefixtures("sigint_reaches_children")
@pytest.mark.slow  # the handler's logic: test_the_first_ctrl_c_asks_for_a_stop_the_second_interrupts
def test_a_second_ctrl_c_stops_at_once_and_still_resumes_to_the_same_numbers(
    tmp_path: Path, uninterrupted
) -> None:
    """Two Ctrl-C as step 20 starts: the second stops the run inside that step, before its update, so
    the checkpoint holds 20 steps, 4 of epoch 1. (The epoch-level rows logged after the resume come one
    step later than in an uninterrupted run: Lightning counts the interrupted step once more when it
    restarts. Only the per-step rows are the same.)"""
    full, stopped = uninterrupted(*RESUMABLE), tmp_path / "stopped"
    fault = [*SIGNAL, "+callbacks.fault.step=20", "+callbacks.fault.signum=2", "+callbacks.fault.times=2",
             f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*RESUMABLE, f"hydra.run.dir={stopped}", *fault)
    assert first.returncode == 130 and not (stopped / "metrics.json").exists()
    assert "Stopped by Ctrl-C" in first.stdout + first.stderr
    ckpt = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 20
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == 4
    resumed = cli(*RESUMABLE, f"hydra.run.dir={stopped}", *fault)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max", "global_step"]
    assert [metrics(stopped)[k] for k in keys] == [metrics(full)[k] for k in keys]
    per_step = lambda run: [r for r in history(run) if "train/g_norm" in r]  # noqa: E731
    assert per_step(stopped) == per_step(full)


@pytest.mark.usefixtures("sigint_reaches_children")
@pytest.mark.slow
def test_a_second_ctrl_c_in_a_validation_saves_nothing_and_resumes_from_the_epoch_before(
    tmp_path: Path, uninterrupted
) -> None:
    """Two Ctrl-C at batch 2 of epoch 1's validation: the second stops inside it, where a checkpoint
    would resume without that validation, so last.ckpt keeps epoch 0's (step 16) and the resume
    repeats epoch 1 to the same numbers."""
    full, stopped = uninterrupted(*RESUMABLE), tmp_path / "stopped"
    fault = [*SIGNAL, "+callbacks.fault.step=32", "+callbacks.fault.val_batch=2", "+callbacks.fault.signum=2",
             "+callbacks.fault.times=2", f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*RESUMABLE, f"hydra.run.dir={stopped}", *fault)
    assert first.returncode == 130, first.stderr[-2000:]
    last = stopped / "checkpoints" / "last.ckpt"
    assert f"no checkpoint saved; {last} keeps step 16" in first.stdout + first.stderr
    assert torch.load(last, weights_only=False)["global_step"] == 16
    resumed = cli(*RESUMABLE, f"hydra.run.dir={stopped}", *fault)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    keys = ["train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max", "global_step"]
    assert [metrics(stopped)[k] for k in keys] == [metrics(full)[k] for k in keys]


def test_a_sigterm_lightning_noted_before_the_handler_took_over_still_stops_the_run() -> None:
    """A SIGTERM while the data loaders are set up reaches Lightning's handler, which raises its flag;
    the validation that follows must not lose it, but stop after its end."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer._signal_connector.received_sigterm = True  # what Lightning's handler leaves
    stop = StopCleanlyOnSigterm()
    stop.on_validation_start(trainer, None)
    assert not trainer.received_sigterm  # no stop inside the validation
    stop.on_validation_end(trainer, None)
    assert trainer.received_sigterm  # but one after it
    quiet = StopCleanlyOnSigterm()
    quiet.on_validation_start(trainer := Trainer(accelerator="cpu", logger=False), None)
    quiet.on_validation_end(trainer, None)
    assert not trainer.received_sigterm  # no signal, no stop


def test_the_first_ctrl_c_asks_for_a_stop_the_second_interrupts(monkeypatch) -> None:
    """In process: the first SIGINT becomes the SIGTERM Lightning stops on after a step, the second is
    ``KeyboardInterrupt``; an ignored SIGINT (a background job) stays ignored; the default comes back."""
    terms = []
    monkeypatch.setattr(signal, "raise_signal", terms.append)  # a real SIGTERM here would end pytest
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopAfterStepOnCtrlC() as ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not ctrl_c.pressed and not terms
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with StopAfterStepOnCtrlC() as ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
            assert ctrl_c.pressed and terms == [signal.SIGTERM]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and terms == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow  # in the default suite: test_wandb_failing_mid_run_costs_nothing
def test_wandb_failing_to_start_costs_nothing(tmp_path: Path) -> None:
    unreachable = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_INIT_TIMEOUT": "2",
                   "WANDB_BASE_URL": "http://127.0.0.1:9"}  # fmt: skip
    proc = cli(*ONE_JOB, "logger=wandb", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}", env=unreachable)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "W&B could not start" in proc.stdout + proc.stderr
    assert metrics(tmp_path)["status"] == "completed"
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_resumed_sweep_skips_completed_jobs_and_continues_the_killed_one(tmp_path: Path, capfd) -> None:
    sweep = tmp_path / "sweep"
    cmd = ["--multirun", *ONE_JOB, "logger=wandb", "trainer.max_epochs=3", "model=ae,rae,vae",
           f"hydra.sweep.dir={sweep}", "+callbacks.fault._target_=tests.helpers.faults.KillOnce",
           "+callbacks.fault.step=20", f"+callbacks.fault.marker={tmp_path / 'marker'}",
           "+callbacks.fault.when=${model.residual}"]  # fmt: skip
    first = cli(*cmd)
    assert first.returncode == -9  # the whole sweep process died inside the rae job
    done = [str(p.parent) for p in sweep.rglob("metrics.json")]
    assert len(done) == 1 and "model=ae," in done[0]
    capfd.readouterr()
    assert run_main("train", *cmd) == 0  # the re-run, here: no process to start
    second = capfd.readouterr()
    out = second.out + second.err
    assert out.count("Already completed, skipping") == 1 and out.count("Resuming from") == 1
    assert [metrics(p.parent)["status"] for p in sweep.rglob("metrics.json")] == ["completed"] * 3
    rae_runs = [p.name for p in sweep.rglob("offline-run-*") if "model=rae," in str(p)]
    assert len(rae_runs) == 2 and len({name.rsplit("-", 1)[1] for name in rae_runs}) == 1  # same id


@pytest.mark.parametrize(
    "damage,problem",
    [
        (lambda b: b[:-100], "truncated"),
        (lambda b: b"\x00\x00\x09\x03" + b[4:], "bad IDX header"),
        (lambda b: b[:6], "header is cut short"),
    ],
)
def test_corrupt_files_name_the_file(tmp_path: Path, damage, problem: str) -> None:
    write_fake_emnist(tmp_path, "byclass", n_classes=62, per_class=(4, 2))
    path = tmp_path / "EMNIST" / "raw" / "emnist-byclass-test-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    dm = OneClassDataModule("emnist", root=str(tmp_path))
    with pytest.raises(CorruptDataError) as err:
        dm.setup()
    assert str(path) in str(err.value) and problem in str(err.value) and "download" in str(err.value)


def test_label_count_mismatch_is_named(tmp_path: Path) -> None:
    write_fake_emnist(tmp_path, "byclass", n_classes=62, per_class=(4, 2))
    labels = tmp_path / "EMNIST" / "raw" / "emnist-byclass-train-labels-idx1-ubyte"
    raw = labels.read_bytes()
    labels.write_bytes(raw[:4] + (len(raw) - 9).to_bytes(4, "big") + raw[8:-1])
    with pytest.raises(CorruptDataError, match="labels for"):
        OneClassDataModule("emnist", root=str(tmp_path)).setup()


def test_cli_on_a_corrupt_data_file_stops_in_one_paragraph_and_records_the_failure(
    tmp_path: Path, capfd
) -> None:
    root = tmp_path / "data"
    write_fake_emnist(root, "byclass", n_classes=62, per_class=(4, 2))
    path = root / "EMNIST" / "raw" / "emnist-byclass-train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    run_dir = tmp_path / "run"
    args = ("data=emnist", "trainer=cpu", "logger=csv", f"data.root={root}", f"hydra.run.dir={run_dir}")
    assert run_main("train", *args) == 2
    output = "".join(capfd.readouterr())
    [error] = [line for line in output.splitlines() if "ERROR" in line]
    assert f"{path} is corrupt:" in error and "truncated" in error and "Fix:" in error
    assert "Traceback" not in output
    # found as the run starts (the missing-file check comes before): recorded as failed, for the report
    assert metrics(run_dir)["status"] == "failed" and "truncated" in metrics(run_dir)["error"]


@pytest.mark.slow
def test_a_40_job_sweep_with_faults_accounts_for_every_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = ["--multirun", *ONE_JOB, "logger=csv", "trainer.max_epochs=1", "model=ae,rae",
           "model.n_layers=range(0,10)", "seed=0,1", f"hydra.sweep.dir={sweep}",
           "+callbacks.fault._target_=tests.helpers.faults.FaultsByJob", "+callbacks.fault.nan_job=7",
           "+callbacks.fault.kill_job=23", "+callbacks.fault.step=5",
           f"+callbacks.fault.marker={tmp_path / 'marker'}"]  # fmt: skip
    first = cli(*cmd, timeout=1200)
    assert first.returncode == -9
    df, missing, _ = build_report(sweep)
    assert len(df) == 24 and len(missing) == 16  # jobs 0..23 started, 24..39 never did
    assert (df.status == "diverged").sum() == 1 and (df.status == "incomplete").sum() == 1

    second = cli(*cmd, timeout=1200)
    assert second.returncode != 0  # the diverged job diverges again and is reported as such
    df, missing, _ = build_report(sweep)
    assert not missing and len(df) == 40
    assert (df.status == "completed").sum() == 39 and (df.status == "diverged").sum() == 1
    assert (second.stdout + second.stderr).count("Already completed, skipping") == 22
    report = (sweep / "report.md").read_text()
    assert "40 jobs expected, 40 started: 39 completed, 1 diverged; 0 missing" in report


def test_wandb_failing_mid_run_costs_nothing(make_cfg, monkeypatch, caplog) -> None:
    cfg = make_cfg("logger=wandb", "trainer.max_epochs=2")
    calls = {"n": 0}
    original = wandb.sdk.wandb_run.Run.log

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:  # the network goes away after a few steps
            raise ConnectionError("network is unreachable")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", flaky)
    try:
        record, _ = train(cfg)
    finally:
        wandb.finish()
    assert calls["n"] > 5 and record["status"] == "completed"
    assert metrics(Path(cfg.paths.output_dir))["test/auroc"] == record["test/auroc"]
    assert "W&B failed to log metrics (ConnectionError: network is unreachable)" in caplog.text


def test_the_csv_history_keeps_the_earlier_steps_before_the_resumed_one(tmp_path: Path) -> None:
    def run(steps: range, value: float, start_step: int = 0) -> ResumableCSVLogger:
        logger = ResumableCSVLogger(tmp_path, name="csv", version="", start_step=start_step)
        for step in steps:
            logger.log_metrics({"train/loss": value}, step=step)
        return logger

    def steps() -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r["train/loss"])) for r in history(tmp_path) if "train/loss" in r]

    first = run(range(10), 1.0)
    first.log_metrics({"train/epoch_loss": 1.5}, step=5)
    first.save()
    with open(tmp_path / "csv" / "metrics.csv", "a") as f:
        f.write("1")  # the row of step 10 cut short by a kill: the resume must not read it as step 1
    resumed = run(range(6, 8), 2.0, start_step=6)  # from a checkpoint at step 6: steps 6-9 are replaced
    resumed.log_metrics({"train/epoch_loss": 1.5}, step=5)  # an epoch-end row logged again: kept once
    resumed.save()
    assert steps() == [(s, 1.0) for s in range(6)] + [(6, 2.0), (7, 2.0)]
    assert all(len(row) > 1 for row in history(tmp_path))  # no row from the cut line
    epoch_rows = [r for r in history(tmp_path) if "train/epoch_loss" in r]
    assert epoch_rows == [{"step": "5", "train/epoch_loss": "1.5"}]
    fresh = run(range(2), 4.0)  # a fresh run in the same directory starts the history again
    fresh.save()
    fresh.log_metrics({"val/auroc": 0.5}, step=2)  # a new column later on still gets its header
    fresh.save()
    assert steps() == [(0, 4.0), (1, 4.0)] and history(tmp_path)[-1] == {"step": "2", "val/auroc": "0.5"}


def test_last_ckpt_holds_the_final_weights_not_the_best(make_cfg) -> None:
    """Lightning 2.6 writes ``last.ckpt`` only when a best-``val/auroc`` checkpoint is written at the same
    step: a job resumed (or trained on with ``ckpt_path=last``) would go back to its best epoch. Here
    "best" is the lowest ``val/auroc``, so the best checkpoint is an early one."""
    cfg = make_cfg("logger=csv", "trainer.max_epochs=3", "callbacks.model_checkpoint.mode=min")
    record, _ = train(cfg)
    best = torch.load(record["best_checkpoint"], weights_only=False)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert best["global_step"] < last["global_step"] == record["global_step"] == 48
    assert [p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").iterdir()].count("last.ckpt") == 1


def test_latest_checkpoint_keeps_the_state_key_of_checkpoints_saved_by_model_checkpoint(tmp_path) -> None:
    """Checkpoints saved before ``LatestCheckpoint`` hold its state under ``ModelCheckpoint``'s key; a
    different key would leave that state behind on resume, with Lightning's missing-callback warning."""
    settings = {"dirpath": tmp_path, "filename": "last", "monitor": None, "every_n_train_steps": 8}
    assert LatestCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key
