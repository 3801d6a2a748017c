"""README.md's (and experiments/results/README.md's) measured numbers are what the kept
records give: ``sigsim readme --check`` passes on the committed files, fails when a number
inside a generated block is retyped,
refuses malformed markers in one line, names each block's record and machine, and reads
records without importing torch (it never measures)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import readme
from experiments.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_committed_readme_matches_the_records(capsys):
    assert main(["readme", "--check"]) == 0, capsys.readouterr().out


def test_a_retyped_number_fails_the_check(tmp_path, capsys):
    text = readme.README.read_text()
    start = text.index("<!-- sigsim:begin default-run-validation -->")
    cut = text.index("exact", start)  # the bytes row, inside the block
    copy = tmp_path / "README.md"
    copy.write_text(text[:cut] + "0.1%" + text[cut + len("exact") :])
    assert readme.main(check=True, files=[(copy, readme.README)]) == 1
    out = capsys.readouterr().out
    assert "default-run-validation" in out and "sigsim readme" in out
    assert readme.main(files=[(copy, readme.README)]) == 0  # regenerating restores the text
    assert copy.read_text() == text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("sigsim:begin peers", "sigsim:begin kept-results"), "not registered"),
        (lambda t: t.replace("<!-- sigsim:end peers -->", ""), "no end marker"),
        (lambda t: t.replace("sigsim:begin gpu-check", "gpu-check").replace(
            "sigsim:end gpu-check", "x"), "lacks the generated block.s. gpu-check"),
    ],
)  # fmt: skip
def test_malformed_markers_are_one_line_errors(tmp_path, capsys, edit, message):
    copy = tmp_path / "README.md"
    copy.write_text(edit(readme.README.read_text()))
    assert main(["readme", "--check"]) == 0  # the real README is untouched
    capsys.readouterr()
    with pytest.raises(ValueError, match=message) as error:
        readme.main(check=True, files=[(copy, readme.README)])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(readme.BLOCKS))
def test_every_block_names_its_record_and_machine(name):
    text = readme.BLOCKS[name].render(readme.RESULTS)
    assert "experiments/results/" in text or readme.BLOCKS[name].document != readme.README
    assert "VM" in text or "NVIDIA" in text, name  # the machine
    assert "2026-" in text or "not a measurement" in text, name  # measured: dated


def test_adding_a_block_is_one_function(tmp_path):
    @readme.block("test-only-count")
    def _count(results: Path) -> str:
        return f"{len(list(results.iterdir()))} kept folders\n"

    try:
        copy = tmp_path / "README.md"
        markers = "<!-- sigsim:begin test-only-count -->\n<!-- sigsim:end test-only-count -->\n"
        copy.write_text(readme.README.read_text() + markers)
        assert readme.main(files=[(copy, readme.README)]) == 0
        expected = f"{len(list(readme.RESULTS.iterdir()))} kept folders\n"
        assert expected + "<!-- sigsim:end test-only-count -->" in copy.read_text()
        assert readme.main(check=True, files=[(copy, readme.README)]) == 0
    finally:
        del readme.BLOCKS["test-only-count"]


def test_regenerating_reads_records_without_torch():
    code = (
        "import sys, experiments.readme as r; r.render(r.README.read_text()); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_a_new_kept_default_run_joins_the_blocks(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(readme.RESULTS, results, ignore=shutil.ignore_patterns("*.png"))
    new = results / "later-default-run"
    shutil.copytree(results / "xeon2-default-run", new)
    meta = json.loads((new / "run.json").read_text())
    (new / "run.json").write_text(json.dumps(meta | {"started_utc": "2026-12-01T00:00:00Z"}))
    assert readme.default_runs(results)[-1] == "later-default-run"
    text, changed = readme.render(readme.README.read_text(), results)
    assert {"time-budget", "default-run-validation", "default-run-bytes-memory"} <= set(changed)
    assert "| `later-default-run` |" in text and "later-default-run/run.json" in text


def test_a_runs_recorded_load_names_the_source_s_load(tmp_path):
    from experiments.readme import _recorded_load

    assert _recorded_load(tmp_path / "run.json") == "load not recorded"
    (tmp_path / "run.json").write_text(
        json.dumps({"load_average_at_start": [0.9, 3.0, 7.1], "load_average_at_end": [2.5, 2, 1]})
    )
    assert _recorded_load(tmp_path / "run.json") == "1-min load average start 0.9, end 2.5"
