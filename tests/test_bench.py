import json
import statistics

import pytest
import torch

from benchmarks import concurrency, logger_cost, loop_cost
from benchmarks.train_speed import ReferenceLoop, Setup, _Interleave, framework, main, write_fake_emnist


def test_bench_runs_all_three_paths_and_writes_its_table(tmp_path, capsys) -> None:
    args = ["--n-train", "3000", "--n-test", "2000", "--n-layers", "1", "--batch-sizes", "64",
            "--steps", "4", "--block", "2", "--warmup", "1", "--repeats", "1",
            "--memory-n-train", "3000", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    result = main(args)
    [row] = result["rows"]
    for key in ("reference_sps", "framework_sps", "naive_sps"):
        assert row[key] > 0
    assert row["framework_over_reference"] == row["framework_sps"] / row["reference_sps"]
    assert result["memory"]["run"]["peak_rss_mib"] > 100 and result["memory"]["run"]["datamodule_setup_s"] > 0
    [saved] = tmp_path.glob("train_speed-*.json")
    assert json.loads(saved.read_text()) == result
    assert "| 1 | 64 |" in capsys.readouterr().out


def test_interleaving_runs_every_path_for_the_same_number_of_timed_steps(tmp_path) -> None:
    write_fake_emnist(tmp_path, 1500, 500)
    x = torch.randint(0, 256, (1500, 784), dtype=torch.uint8)
    setup = Setup("cpu")
    loops = [ReferenceLoop(x, 1, 32, setup), ReferenceLoop(x, 1, 32, setup)]
    interleave = _Interleave(loops, steps=6, block=2, warmup=3, setup=setup)
    framework(tmp_path, 1, 32, interleave)
    assert [loop.i for loop in loops] == [3 + 6, 3 + 6]  # warm-up, then three blocks of two
    assert all(s > 0 for s in interleave.seconds)
    with pytest.raises(ValueError, match="--steps=5 must be a multiple of --block=2"):
        _Interleave(loops, steps=5, block=2, warmup=0, setup=setup)
    with pytest.raises(ValueError, match="--settle=-1 must be at least 0"):
        _Interleave(loops, steps=4, block=2, warmup=0, setup=setup, settle=-1)


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--block=0", "--block=0 must be at least 1"), ("--repeats=0", "--repeats=0 must be at least 1")],
)
def test_bench_refuses_turns_it_cannot_run_before_any_work(tmp_path, capsys, flag, message) -> None:
    with pytest.raises(SystemExit):
        main(["--steps", "200", flag, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _RecordingLoop(ReferenceLoop):
    def run(self, steps: int) -> float:
        self.turns = [*getattr(self, "turns", []), steps]
        return super().run(steps)


class _CountingInterleave(_Interleave):
    """Counts the framework steps run while its timer is running."""

    timed = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timed += self.t0 is not None


@pytest.mark.parametrize("settle", [0, 1, 3])
def test_each_turn_times_a_block_after_its_untimed_settling_steps(tmp_path, settle) -> None:
    write_fake_emnist(tmp_path, 1500, 500)
    x = torch.randint(0, 256, (1500, 784), dtype=torch.uint8)
    setup = Setup("cpu")
    loops = [_RecordingLoop(x, 1, 32, setup), _RecordingLoop(x, 1, 32, setup)]
    interleave = _CountingInterleave(loops, steps=6, block=2, warmup=3, setup=setup, settle=settle)
    framework(tmp_path, 1, 32, interleave)
    turn = [settle, 2] if settle else [2]
    assert [loop.turns for loop in loops] == [[3, *turn * 3]] * 2  # warm-up, then three turns
    assert interleave.timed == 6  # the framework's timed steps: as many as each loop's
    assert interleave.total_steps == 3 + 3 * (settle + 2)
    assert all(s > 0 for s in interleave.seconds)


@pytest.mark.slow
def test_logger_cost_times_each_logger_over_whole_runs(tmp_path, capsys) -> None:
    args = ["--loggers", "csv", "wandb", "--rounds", "1", "--steps", "4", "--warmup", "2",
            "--n-train", "2000", "--out", str(tmp_path)]  # fmt: skip
    result = logger_cost.main(args)
    assert [row["logger"] for row in result["rows"]] == ["csv", "wandb"]
    assert all(len(row["runs"]) == 1 and row["ms_per_step"] > 0 for row in result["rows"])
    assert result["rows"][0]["over_baseline"] == 1.0
    [saved] = tmp_path.glob("logger_cost-*.json")
    assert json.loads(saved.read_text()) == result
    assert "| wandb |" in capsys.readouterr().out


@pytest.mark.slow
def test_logger_cost_names_the_logger_whose_run_failed(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="logger=no_such_logger run failed"):
        logger_cost.main(
            ["--loggers", "no_such_logger", "--rounds", "1", "--n-train", "500", "--out", str(tmp_path)]
        )


def test_loop_cost_times_both_lightning_paths_against_their_references(tmp_path, capsys) -> None:
    args = ["--n-train", "1500", "--steps", "4", "--block", "2", "--settle", "1", "--warmup", "1",
            "--repeats", "2", "--out", str(tmp_path)]  # fmt: skip
    result = loop_cost.main(args)
    for path in ("model_only", "framework"):
        runs = result[path]["runs"]
        assert len(runs) == 2 and all(r["ms"] > 0 and r["reference_ms"] > 0 for r in runs)
        assert all(r["extra_ms"] == pytest.approx(r["ms"] - r["reference_ms"]) for r in runs)
        for key in ("ms", "reference_ms", "extra_ms"):
            assert result[path][key] == statistics.median(r[key] for r in runs)
    [saved] = tmp_path.glob("loop_cost-*.json")
    assert json.loads(saved.read_text()) == result
    out = capsys.readouterr().out
    assert "| Lightning, model only | " in out and "| framework | " in out


def test_loop_cost_model_only_path_takes_turns_with_its_reference(tmp_path) -> None:
    write_fake_emnist(tmp_path, 1500, 500)
    x = torch.randint(0, 256, (1500, 784), dtype=torch.uint8)
    reference = _RecordingLoop(x, 1, 32, Setup("cpu"))
    interleave = _Interleave([reference], steps=6, block=2, warmup=3, setup=Setup("cpu"), settle=1)
    loop_cost.model_only(tmp_path, 1, 32, interleave)
    assert reference.turns == [3] + [1, 2] * 3  # warm-up, then three turns of 1 untimed + 2 timed
    assert all(s > 0 for s in interleave.seconds)


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--repeats=0", "--repeats=0 must be at least 1"), ("--block=0", "--block=0 must be at least 1")],
)
def test_loop_cost_refuses_settings_it_cannot_run_before_any_work(tmp_path, capsys, flag, message) -> None:
    with pytest.raises(SystemExit):
        loop_cost.main([flag, "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_concurrency_compares_each_case_with_jobs_times_alone_over_cores(capsys) -> None:
    # 2 cores: two jobs ideally take as long as one alone, four twice as long
    assert concurrency._row("default", "2 at once", 2, 30.0, 10.0, 2)["over_ideal"] == 3.0
    assert concurrency._row("default", "4 at once", 4, 30.0, 10.0, 2)["over_ideal"] == 1.5
    assert concurrency._row("default", "1 at once", 1, 10.0, 10.0, 2)["over_ideal"] == 1.0
    stopped = concurrency._row("default", "4 at once", 4, None, 10.0, 2)
    concurrency.print_table({"cores": 2, "epochs": 1, "timeout_s": 60, "rows": [stopped]})
    assert "| default | 4 at once | > 60 (stopped) | – |" in capsys.readouterr().out


@pytest.mark.slow
def test_concurrency_runs_every_setting_alone_and_together(tmp_path) -> None:
    result = concurrency.main(
        ["--epochs", "1", "--counts", "1", "2", "--no-launchers", "--out", str(tmp_path)]
    )
    cases = [(r["setting"], r["case"]) for r in result["rows"]]
    assert cases == [(s, f"{n} at once") for s in list(concurrency.SETTINGS)[:2] for n in (1, 2)]
    assert all(r["wall_s"] > 0 and r["over_ideal"] > 0 for r in result["rows"])
    [saved] = tmp_path.glob("concurrency-*.json")
    assert json.loads(saved.read_text()) == result
