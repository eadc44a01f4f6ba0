import json

from benchmarks.train_speed import main


def test_bench_runs_all_three_paths_and_writes_its_table(tmp_path, capsys) -> None:
    args = ["--n-train", "3000", "--n-test", "2000", "--n-layers", "1", "--batch-sizes", "64",
            "--steps", "4", "--naive-steps", "3", "--warmup", "1", "--repeats", "1",
            "--memory-n-train", "3000", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    result = main(args)
    [row] = result["rows"]
    for key in ("reference_sps", "framework_sps", "naive_sps"):
        assert row[key] > 0
    assert row["framework_over_reference"] == row["framework_sps"] / row["reference_sps"]
    for run in ("first_run", "cached"):
        assert result["memory"][run]["peak_rss_mib"] > 100 and result["memory"][run]["datamodule_setup_s"] > 0
    [saved] = tmp_path.glob("train_speed-*.json")
    assert json.loads(saved.read_text()) == result
    assert "| 1 | 64 |" in capsys.readouterr().out
