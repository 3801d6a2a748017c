"""The ``sigsim`` command line end to end: ``run`` on a tiny sweep (calibrating a machine
that has no profile first), then ``validate``, ``plot``, ``report``, ``maxbatch`` and
``run --resume`` on that run directory without measuring again; ``predict`` and every
subcommand's ``--help`` (units and defaults stated); the one rule for where output goes
(every writing verb takes ``--out``, readers a positional input, old spellings still parse).

One tiny sweep is shared by the module (process groups are slow to start); the
calibration cache is redirected to a temporary folder so nothing outside it is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import rundir
from experiments.cli import build_parser, main
from simulator import hardware

TINY = """\
# Two methods, W = 1 and 2, one shape, plus emulated W = 4: the smallest useful sweep.
[run]
name = "tiny"
emulated_world = [4]

[point]
method = ["sigmoid-ring", "softmax-allgather"]
world = [1, 2]
batch = 8
dim = 16
steps = 2
warmup = 1
profile = false
timeout_s = 120.0
"""

SUBCOMMANDS = ("run", "calibrate", "predict", "validate", "plot", "report", "maxbatch")
VERBS = (
    *SUBCOMMANDS, "recommend", "simulate", "trace", "point", "grid", "mark", "peers",
    "gpu-check", "profiles", "noise-floor", "readme",
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An empty calibration cache for this module."""
    folder = tmp_path_factory.mktemp("hardware-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hardware, "CACHE_DIR", folder)
        yield folder


@pytest.fixture(scope="module")
def tiny_run(cache, tmp_path_factory):
    """``sigsim run tiny.toml`` into a fresh runs folder; returns (run dir, stdout)."""
    work = tmp_path_factory.mktemp("work")
    config = work / "tiny.toml"
    config.write_text(TINY)
    status = main(["run", str(config), "--runs-dir", str(work / "runs"), "--quick-calibration"])
    assert status == 0
    (run_dir,) = (work / "runs").iterdir()
    return run_dir


PLOTS = ("memory", "memory_emulated", "bytes", "step_time", "predicted_vs_measured")
PLOTS += ("cluster_scale", "maxbatch")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_run_calibrates_measures_and_writes_everything(tiny_run, cache):
    assert tiny_run.name.endswith("-tiny")
    assert list(cache.glob("*.json")), "no profile was calibrated"
    records = [json.loads(line) for line in (tiny_run / rundir.RESULTS).read_text().splitlines()]
    assert len(records) == 2 * 2 + 2  # real: 2 methods × W ∈ {1, 2}; emulated: 2 at W = 4
    assert all(r["status"] == "ok" for r in records), [r["message"] for r in records]
    for stem in PLOTS:
        assert (tiny_run / f"{stem}.png").stat().st_size > 0
        assert (tiny_run / f"{stem}.svg").stat().st_size > 0
    meta = json.loads((tiny_run / rundir.META).read_text())
    assert set(meta["phases_s"]) >= {"calibration", "measurement", "total"}
    assert meta["hardware"].endswith(".json")
    report = (tiny_run / "report.md").read_text()
    for needle in ("## Hardware and software", "## Method", "maximum over ranks", "geomean"):
        assert needle in report
    for stem in PLOTS:
        assert f"]({stem}.png)" in report
    assert "| total |" in report
    validation = json.loads((tiny_run / rundir.VALIDATION).read_text())
    bytes_rows = [p for p in validation["points"] if p["quantity"] == "bytes_sent"]
    assert len(bytes_rows) == 6
    assert all(p["predicted"] == p["measured"] for p in bytes_rows)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_plot_and_report_regenerate_without_measuring(tiny_run, capsys):
    results_before = (tiny_run / rundir.RESULTS).read_bytes()
    for path in tiny_run.glob("*.png"):
        path.unlink()
    (tiny_run / "report.md").unlink()
    assert main(["plot", str(tiny_run)]) == 0
    assert all((tiny_run / f"{stem}.png").is_file() for stem in PLOTS)
    assert not (tiny_run / "report.md").exists()
    assert main(["report", str(tiny_run)]) == 0
    assert "geomean" in (tiny_run / "report.md").read_text()
    assert (tiny_run / rundir.RESULTS).read_bytes() == results_before
    out = capsys.readouterr().out
    assert "report.md" in out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_validate_prints_every_point_and_the_summary(tiny_run, capsys):
    assert main(["validate", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "Predicted vs measured" in out and "Validation" in out
    assert out.count("sigmoid-ring") >= 3 and out.count("softmax-allgather") >= 3
    assert main(["validate", str(tiny_run), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {p["method"] for p in payload["points"]} == {"sigmoid-ring", "softmax-allgather"}
    assert payload["summary"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_skips_finished_points(tiny_run, capsys):
    lines_before = (tiny_run / rundir.RESULTS).read_text().count("\n")
    assert main(["run", "--resume", str(tiny_run)]) == 0
    assert (tiny_run / rundir.RESULTS).read_text().count("\n") == lines_before
    assert "6 skipped" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.multiprocess
def test_maxbatch_overlays_measured_points(tiny_run, tmp_path, capsys):
    status = main(
        [
            "maxbatch",
            "--hardware",
            "h100-sxm",
            "--memory-GiB",
            "0.001",
            "--worlds",
            "1,2,4",
            "--dim",
            "16",
            "--dtype",
            "fp32",
            str(tiny_run),
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "measured" in out and "model" in out
    assert (tmp_path / "maxbatch.png").is_file() and (tmp_path / "maxbatch.svg").is_file()


def test_predict_prints_one_row_per_point(capsys):
    status = main(
        [
            "predict",
            "--method",
            "sigmoid-ring,softmax-allgather",
            "--world",
            "8,4096",
            "--batch",
            "1024",
            "--dim",
            "512",
            "--hardware",
            "h100-sxm",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert out.count("sigmoid-ring") == 2 and out.count("softmax-allgather") == 2
    assert "4096" in out and "step (ms)" in out


def test_predict_takes_the_accumulator_policy_as_the_point_verb_spells_it(capsys):
    def step_ms(*extra):
        argv = ["predict", "--method", "sigmoid-ring", "--world", "512", "--batch", "1024",
                "--dim", "768", "--hardware", "h100-sxm", "--json", *extra]  # fmt: skip
        assert main(argv) == 0
        return json.loads(capsys.readouterr().out.splitlines()[0])["step_time_s"]

    hidden = step_ms()  # the CUDA profile's default: hidden
    assert step_ms("--hide-accumulator", "true") == hidden
    assert step_ms("--hide-accumulator", "false") > hidden
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--hide-accumulator", "maybe"])


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["predict", "--method", "nope", "--hardware", "h100-sxm"]) == 2
    assert main(["predict", "--hardware", "no-such-profile"]) == 2
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "nope" in err[0] and "sigmoid-ring" in err[0]
    assert "no-such-profile" in err[1] and "h100-sxm" in err[1]
    assert "does not exist" in err[2]


def test_every_subcommand_help_states_units_and_defaults():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    choices = actions["command"].choices
    assert set(SUBCOMMANDS) <= set(choices)
    for name in SUBCOMMANDS:
        text = choices[name].format_help()
        assert "Units:" in text and "MiB" in text, name
        if name not in ("validate", "plot", "report"):
            assert "(default:" in text, name
    assert "examples per rank" in choices["predict"].format_help()
    assert "GiB" in choices["maxbatch"].format_help()


def test_python_dash_m_experiments_runs_the_cli():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0
    for name in SUBCOMMANDS:
        assert name in done.stdout


def test_every_verb_has_help_and_is_in_the_readme(capsys):
    choices = {a.dest: a for a in build_parser()._actions}["command"].choices
    assert set(choices) == set(VERBS)
    readme = (ROOT / "README.md").read_text()
    for verb in VERBS:
        with pytest.raises(SystemExit) as exit_:
            main([verb, "--help"])
        assert exit_.value.code == 0, verb
        assert f"usage: sigsim {verb}" in capsys.readouterr().out, verb
        assert f"| `sigsim {verb}" in readme, f"{verb} missing from the README's command table"


def test_new_verbs_refuse_bad_input_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.toml")
    out = str(tmp_path / "r.jsonl")
    for argv, message in [
        (["point", "--method", "sigmoid-ring", "--out", out], "a point needs --world"),
        (["grid", missing, "--count"], "cannot read grid"),
        (["mark", "--grid", missing, "--index", "0", "--out", out, "--status", "error",
          "--message", "m"], "cannot read grid"),
        (["gpu-check", "--cpu", "--batch", "0", "--out", str(tmp_path / "g")], "batch, dim"),
        (["peers", "--world", "0", "--out", out], "world must be an integer >= 1"),
        (["validate", str(tmp_path), out], "one run directory"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "g").exists() and not Path(out).exists()


def test_json_on_table_verbs(capsys):
    assert main(["profiles", "--json"]) == 0
    assert "h100-sxm" in json.loads(capsys.readouterr().out)
    argv = ["predict", "--method", "sigmoid-ring", "--world", "2,4", "--batch", "8", "--dim", "4"]
    assert main([*argv, "--hardware", "h100-sxm", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["world"] for r in rows] == [2, 4] and all(r["bytes_sent"] > 0 for r in rows)
    argv = ["maxbatch", "--method", "sigmoid-ring", "--worlds", "8", "--hardware", "h100-sxm"]
    assert main([*argv, "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["method"] == "sigmoid-ring" and row["world"] == 8 and row["batch"] > 0


@pytest.mark.parametrize(
    "argv, new",
    [
        (["simulator", "predict", "--method", "sigmoid-ring"], "sigsim predict"),
        (["simulator", "validate", "results.jsonl"], "sigsim validate"),
        (["benchmarks.peers", "--world", "4"], "sigsim peers"),
        (["benchmarks.gpu_check", "--cpu"], "sigsim gpu-check"),
    ],
)
def test_old_entry_points_name_the_new_command(argv, new):
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and new in done.stderr, done.stderr


def test_python_dash_m_profiling_point_is_sigsim_point():
    done = subprocess.run(
        [sys.executable, "-m", "profiling", "point", "--method", "sigmoid-ring", "--out", "x"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "refused: a point needs --world (or --grid and --index)"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_run_json_prints_one_summary_object(tiny_run, capsys):
    assert main(["run", "--resume", str(tiny_run), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds the JSON object and nothing else
    assert summary["run_dir"] == str(tiny_run) and summary["points"] == {"skipped": 6}
    assert "resumed: total" in summary["phases_s"]
    assert {s["quantity"] for s in summary["validation"]} >= {"bytes_sent"}
    assert "Measured" in captured.err  # the tables went to stderr


@pytest.mark.slow
@pytest.mark.multiprocess
def test_trace_json(tmp_path, capsys):
    argv = ["trace", "--method", "sigmoid-ring", "--world", "2", "--batch", "8", "--dim", "4"]
    argv += ["--hardware", "h100-sxm", "--warmup", "1", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["measured_step_s"] > 0 and summary["simulated_step_s"] > 0
    assert sorted(Path(p).name for p in summary["files"]) == ["measured.json", "simulated.json"]


def test_calibrate_json_prints_the_written_profile(tmp_path, monkeypatch, capsys):
    import simulator.calibrate

    written = tmp_path / "profile.json"

    def fake_calibrate(config, console):  # the measurement itself is tested elsewhere
        written.write_text((hardware.BUNDLED_DIR / "h100-sxm.json").read_text())
        return written, {}

    monkeypatch.setattr(simulator.calibrate, "calibrate", fake_calibrate)
    assert main(["calibrate", "--quick", "--out", str(written), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["path"] == str(written) and payload["profile"]["name"] == "h100-sxm"


def test_every_verb_that_prints_a_table_takes_json():
    """Verbs that print tables offer ``--json``; the others print paths or one line."""
    choices = {a.dest: a for a in build_parser()._actions}["command"].choices
    no_table = {"plot", "report", "point", "grid", "mark", "readme"}
    for verb in set(VERBS) - no_table:
        assert "--json" in choices[verb].format_help(), verb


# Where output goes (one rule, ``sigsim --help``'s epilog): every verb that writes takes
# --out; every verb that reads takes its input as the positional argument.
WRITERS = {
    "run": "DIR", "calibrate": "PROFILE.json", "point": None, "grid": None, "mark": None,
    "peers": "RESULTS.jsonl", "gpu-check": "DIR", "noise-floor": None, "trace": "DIR",
    "simulate": "PATH", "maxbatch": "DIR", "validate": "FILE.json",
}  # fmt: skip
READERS = {"plot": "RUN_DIR", "report": "RUN_DIR", "maxbatch": "RUN_DIR"}


def _verbs() -> dict:
    return {a.dest: a for a in build_parser()._actions}["command"].choices


def _option(parser, flag: str):
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


def test_every_writing_verb_takes_out_and_the_rule_is_stated_once():
    verbs = _verbs()
    rule = build_parser().epilog
    assert "every verb that writes takes --out PATH" in rule
    for verb, metavar in WRITERS.items():
        out = _option(verbs[verb], "--out")
        assert metavar is None or out.metavar == metavar, (verb, out.metavar)
        assert verb in rule, f"{verb} missing from the --out rule"
        # grid is exempt: it refuses to run without --out (only --count runs without it).
        if not out.required and verb != "grid":
            stated = out.default is not None or "without it" in (out.help or "")
            assert stated, f"{verb}: --help does not say what it writes without --out"
    for verb, metavar in READERS.items():
        (positional,) = [a for a in verbs[verb]._actions if not a.option_strings]
        assert positional.metavar == metavar and verb in rule, verb
    assert "RUN_DIR|RESULTS.jsonl" in verbs["validate"].format_usage()


@pytest.mark.parametrize(
    "verb, new, old, dest",
    [
        ("calibrate", "--out", "--output", "out"),
        ("simulate", "--out", "--trace", "trace"),
        ("validate", "--out", "--summary-json", "out"),
        ("maxbatch", None, "--run", "run"),
    ],
)
def test_old_spellings_parse_to_the_same_dest_and_are_hidden(verb, new, old, dest, tmp_path):
    parser = build_parser()
    first = ["validate", "r.jsonl"] if verb == "validate" else [verb]
    by_old = parser.parse_args([*first, old, str(tmp_path / "a")])
    assert str(getattr(by_old, dest)) == str(tmp_path / "a")
    by_new = [*first, new, str(tmp_path / "b")] if new else [verb, str(tmp_path / "b")]
    assert str(getattr(parser.parse_args(by_new), dest)) == str(tmp_path / "b")
    assert getattr(parser.parse_args(first), dest) is None
    assert old not in _verbs()[verb].format_help()


def test_run_out_refuses_a_non_empty_folder_and_resume_with_out(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.jsonl").write_text("{}\n")
    assert main(["run", "smoke", "--out", str(taken)]) == 2
    assert main(["run", "smoke", "--out", str(tmp_path / "new"), "--resume", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2, err
    first, second = err.splitlines()
    assert "is not empty" in first and f"--resume {taken}" in first
    assert "--resume RUN_DIR" in second and "--out DIR" in second
    assert [p.name for p in taken.iterdir()] == ["results.jsonl"]  # untouched
    assert not (tmp_path / "new").exists()


def test_run_out_names_the_run_directory_exactly(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    run = rundir.create(config, "tiny", tmp_path / "runs", out=tmp_path / "mine")
    assert run.path == tmp_path / "mine" and not (tmp_path / "runs").exists()
    assert (run.path / rundir.CONFIG).read_text() == TINY
    (tmp_path / "empty").mkdir()  # an existing empty folder is accepted
    assert rundir.create(config, "tiny", out=tmp_path / "empty").path == tmp_path / "empty"
    stamped = rundir.create(config, "tiny", tmp_path / "runs")  # without out: as before
    assert stamped.path.parent == tmp_path / "runs" and stamped.path.name.endswith("-tiny")


def test_readers_given_a_results_file_name_what_they_need(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    results.write_text("{}\n")
    for verb in ("plot", "report"):
        assert main([verb, str(results)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "run directory" in err and "sigsim validate" in err
