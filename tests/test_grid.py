"""profiling.grid and results: a grid with an ok point, a rank that raises, an
out-of-memory and a hang is recorded point by point and goes on; rerunning skips what is
done and retries a timeout exactly once; bad configs are refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch

from profiling import point, results
from profiling.grid import load_grid, run_grid
from profiling.launch import ConfigError
from profiling.measure import PointConfig

SMALL = dict(batch=8, dim=16, steps=2, warmup=1, timeout_s=120, pg_timeout_s=60)


def write_grid(path, body: str):
    path.write_text(body)
    return load_grid(path)


def test_load_grid_point_table_and_points(tmp_path):
    points = write_grid(
        tmp_path / "g.toml",
        """
[point]
method = ["sigmoid-ring", "softmax-allgather"]
world = [4, 2]
batch = 8
dim = 16
overlap = false
""",
    )
    assert [(p.method, p.world, p.overlap) for p in points] == [
        ("sigmoid-ring", 2, False),
        ("softmax-allgather", 2, None),  # overlap only varies for the methods that take it
        ("sigmoid-ring", 4, False),
        ("softmax-allgather", 4, None),
    ]
    assert all(p.batch == 8 and p.dim == 16 for p in points)
    extra = write_grid(
        tmp_path / "e.toml",
        "[point]\nbatch = 8\ndim = 16\n"
        "[[points]]\nmethod = 'sigmoid-ring'\nworld = [2, 3]\n"
        "[[points]]\nmethod = 'softmax-ring'\nworld = 4\ntile = 'b'\n",
    )
    assert [(p.method, p.world, p.batch, p.tile) for p in extra] == [
        ("sigmoid-ring", 2, 8, None),
        ("sigmoid-ring", 3, 8, None),
        ("softmax-ring", 4, 8, None),
    ]


def test_hide_accumulator_is_a_ring_only_point_option(tmp_path):
    points = write_grid(
        tmp_path / "h.toml",
        "[point]\nmethod = ['softmax-ring', 'sigmoid-allgather']\nworld = 2\nbatch = 8\n"
        "dim = 16\nhide_accumulator = [true, false]\n",
    )
    assert [(p.method, p.hide_accumulator) for p in points] == [
        ("softmax-ring", True),
        ("softmax-ring", False),
        ("sigmoid-allgather", None),  # the option only varies for the methods that take it
    ]
    assert points[0].loss_options()["hide_accumulator"] is True
    assert "hide_accumulator" not in points[2].loss_options()
    assert points[0].as_dict()["hide_accumulator"] is True  # recorded in the config
    point.validate_point(points[0])
    bad = PointConfig(method="sigmoid-allgather", world=2, batch=8, dim=16, hide_accumulator=True)
    with pytest.raises(ConfigError, match="takes no option 'hide_accumulator'"):
        point.validate_point(bad)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[point]\nmethod = 'sigmoid-ring'\nworld = 2\nbatchsize = 3\n", "unknown key 'batchsize'"),
        (
            "[defaults]\nbatch = 8\n",
            r"\[defaults\] is the old spelling: write its keys under \[point\]",
        ),
        (
            "[sweep]\nworld = [2]\n",
            r"\[sweep\] is the old spelling: write its lists under \[point\]",
        ),
        ("[point]\nworlds = [2]\n", "'worlds' is the old spelling: write world"),
        ("[points]\nworld = 2\n", "write \\[\\[points\\]\\]"),
        ("[grid]\n", "unknown table 'grid'"),
        ("", "no points"),
    ],
)
def test_bad_grid_file_one_line(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message) as caught:
        write_grid(tmp_path / "bad.toml", body)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(method="no-such-loss"), "unknown method 'no-such-loss'"),
        (dict(batch=0), "batch must be an integer >= 1"),
        (dict(dtype="fp8"), "unknown dtype 'fp8'"),
        (dict(emulate="exact", world=64), "exact emulation runs W threads"),
        (dict(method="sigmoid-allgather", tile=4), "takes no option 'tile'"),
        (dict(fault="explode@rank0"), "bad fault"),
    ],
)
def test_refused_before_launch(tmp_path, change, message):
    points = [PointConfig(method="sigmoid-ring", world=2, **SMALL)]
    points.append(PointConfig(**{"method": "sigmoid-ring", "world": 2, **SMALL, **change}))
    out = tmp_path / "r.jsonl"
    with pytest.raises(ConfigError, match=f"point 1 .*{message}"):
        run_grid(points, out, progress=False)
    assert not out.exists()  # nothing ran, not even the good point


def test_refused_gpu_world_and_missing_dtype(monkeypatch):
    if torch.cuda.device_count() == 0:
        with pytest.raises(ConfigError, match="no GPU is visible"):
            point.validate_point(
                PointConfig(method="sigmoid-ring", world=2, device="cuda", **SMALL)
            )
    monkeypatch.setattr(point, "_dtype_works", lambda name, device: name != "bf16")
    with pytest.raises(ConfigError, match="dtype bf16 is not supported on cpu"):
        point.validate_point(PointConfig(method="sigmoid-ring", world=2, dtype="bf16", **SMALL))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_faults_are_recorded_and_resume_skips_done(tmp_path):
    ok = PointConfig(method="sigmoid-ring", world=2, **SMALL)
    raises = PointConfig(method="sigmoid-ring", world=2, fault="raise@rank1", **SMALL)
    oom = PointConfig(method="softmax-ring", world=2, fault="oom@rank0", **SMALL)
    hang = PointConfig(
        method="sigmoid-ring", world=2, fault="hang@rank1", **{**SMALL, "timeout_s": 5}
    )
    stand_in = PointConfig(method="sigmoid-ring", world=64, emulate="stand-in", **SMALL)
    out = tmp_path / "results.jsonl"
    grid = [ok, raises, oom, hang, stand_in]

    summary = run_grid(grid, out, progress=False)
    records = results.read_records(out)
    assert [r["status"] for r in records] == ["ok", "error", "oom", "timeout", "ok"]
    for record in (records[0], records[4]):  # every field a measured point holds is named
        assert set(record["measured"]) <= set(results.MEASURED_FIELDS)
        assert tuple(record) == results.RECORD_FIELDS
    assert summary.statuses == {"ok": 2, "error": 1, "oom": 1, "timeout": 1}
    assert records[1]["message"] == "rank 1: RuntimeError: injected fault: rank 1 raised"
    assert records[2]["message"].startswith("rank 0: RuntimeError:")
    assert "can't allocate memory" in records[2]["message"]
    assert "no result after 5 s" in records[3]["message"]
    assert all(r["measured"] is None for r in records[1:4])
    first = records[0]
    assert first["key"] == results.point_key(ok.as_dict())
    assert first["env"]["backend"] == "gloo" and first["env"]["cpu_count"] >= 1
    assert first["measured"]["bytes_sent"] > 0 and first["measured"]["ranks_agree"]
    assert records[4]["measured"]["peer_values"] == "stand-in"
    assert records[4]["config"]["world"] == 64

    # A crash mid-write leaves a torn line: it is skipped, nothing before it is lost.
    with open(out, "a") as f:
        f.write('{"schema": 1, "key": "torn')
    # Rerun: only the timeout runs again, once, marked as attempt 2.
    summary = run_grid(grid, out, progress=False)
    assert summary.skipped == 4 and summary.statuses == {"timeout": 1}
    again = results.read_records(out)
    assert len(again) == 6 and again[-1]["attempt"] == 2
    assert again[-1]["key"] == results.point_key(hang.as_dict())
    # Third run: two timeouts make the point finished; nothing runs.
    summary = run_grid(grid, out, progress=False)
    assert summary.skipped == 5 and not summary.statuses
    # Every line but the torn one is valid JSON with the schema's top-level fields.
    lines = [
        json.loads(x)
        for x in out.read_text().splitlines()
        if not x.startswith('{"schema": 1, "key": "torn')
    ]
    assert all(
        {"schema", "key", "status", "message", "config", "env", "measured"} <= set(r) for r in lines
    )
