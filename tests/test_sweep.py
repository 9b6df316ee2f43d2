"""lpu-sweep end to end on a tiny checkpoint: rows per recipe, files, plot, errors."""

import csv
import json
import subprocess
import sys

from lpu_jax.cli.sweep import embedded_text
from tests import tiny_models
from tests.cli_forks import run_each
from tests.test_cli import assert_user_error


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lpu_jax.cli.sweep", *args],
                          capture_output=True, text=True, timeout=1800)


def test_sweep_table_files_and_plot(tiny_checkpoints, tmp_path):
    path = tiny_models.with_byte_tokenizer(tiny_checkpoints.get("mha"), tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(embedded_text(4000))
    args = ["--model", str(path), "--text", str(text), "--tokens", "300",
            "--recipes", "f32,truepoint-int8,int4-g32"]
    result = sweep(*args, "--out", str(tmp_path / "rows.csv"), "--plot", str(tmp_path / "a.png"),
                   "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {r["recipe"]: r for r in report["rows"]}
    assert rows["f32"]["tokens"] == 300
    assert rows["f32"]["top1_agreement"] == 1.0 and rows["f32"]["mean_kl"] == 0.0
    assert rows["int4-g32"]["mean_kl"] > rows["truepoint-int8"]["mean_kl"] > 0
    assert rows["int4-g32"]["bytes_per_parameter"] < rows["truepoint-int8"]["bytes_per_parameter"]
    with open(tmp_path / "rows.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["recipe"] for r in table] == list(rows)
    assert "top1_agreement" in table[0]
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[mlp]\nweights = "int8"\nacumulation = "f32"\n')
    cases = [(["--recipes", "f32,nope"], "unknown precision recipe 'nope'"),
             (["--text", str(tmp_path / "missing.txt")], "no such file"),
             (["--out", str(tmp_path / "rows.xlsx")], "must end in .csv or .json"),
             (["--plot", str(tmp_path / "no" / "a.png")], "does not exist"),
             (["--recipes", str(bad)], "unknown key 'acumulation'")]
    runs = run_each("lpu_jax.cli.sweep", [args for args, _ in cases])
    for args, message in cases:
        assert_user_error(runs[tuple(args)], message)
    assert not list(tmp_path.glob(".*tmp"))


def test_embedded_text_ships_with_python():
    assert len(embedded_text(20000)) >= 20000
