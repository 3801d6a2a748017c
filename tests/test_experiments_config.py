"""Sweep configs: shipped files load, the grid is the product it should be (PointConfigs,
the ones the profiler records), a grid file is a sweep, and every kind of bad config
(unknown key, old spelling, wrong type, empty grid, unknown method) is refused with one
line that names the key and the allowed values, also through the command line (exit 2)."""

from __future__ import annotations

import random

import pytest

from experiments import config as sweep_config
from experiments.cli import main
from profiling.grid import load_grid
from profiling.losses import METHODS
from profiling.point import ConfigError, PointConfig


def write(tmp_path, text: str):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def test_every_shipped_config_loads_and_opens_with_a_comment():
    shipped = sweep_config.shipped()
    assert {"default", "smoke"} <= set(shipped)
    for name, path in shipped.items():
        assert path.read_text().startswith("#"), f"{name} opens without a comment"
        config = sweep_config.load(name)
        assert config.name == name
        assert config.grid(), name


def test_default_runs_every_method_at_w_1_2_4_8_on_gloo():
    config = sweep_config.load("default")
    assert config.backend == "gloo" and config.device == "cpu"
    assert {p.world for p in config.grid()} == {1, 2, 4, 8}
    assert set(config.resolved_methods()) == set(METHODS)
    assert len({p.batch for p in config.grid()}) >= 3
    assert all(isinstance(p, PointConfig) for p in config.grid())


def test_shipped_configs_make_the_points_they_made_before():
    """The records' configs (hence their keys) are those the flat dialect produced: the
    default run's 60 points, ring overlap recorded as true, all-gathers' as null."""
    points = sweep_config.load("default").grid()
    assert len(points) == 60
    ring = next(p for p in points if p.method == "sigmoid-ring")
    gather = next(p for p in points if p.method == "sigmoid-allgather")
    assert (ring.overlap, ring.tile, gather.overlap, gather.tile) == (True, None, None, None)
    assert {(p.steps, p.warmup, p.timeout_s, p.profile) for p in points} == {(40, 2, 120.0, True)}
    ladder = sweep_config.load("memory-ladder")
    emulated = ladder.emulated_grid()
    assert {p.world for p in emulated} == {16, 64, 256}
    assert {p.emulate for p in emulated} == {"stand-in"} and not ladder.grid()[0].profile
    assert len(emulated) == 3 * 2 * len(METHODS)


def test_a_grid_file_is_a_sweep_and_the_sweep_a_grid(tmp_path):
    """One TOML shape: the same file gives the same points to `sigsim grid` and `run`."""
    path = write(tmp_path, "[point]\nmethod = 'softmax-ring'\nworld = [2, 1]\nbatch = 8\ndim = 4\n")
    assert load_grid(path) == sweep_config.load(path).grid()
    assert [p.world for p in load_grid(path)] == [1, 2]


def test_grid_is_the_product_and_options_vary_only_for_ring_methods(tmp_path):
    rng = random.Random(7)
    worlds = sorted(rng.sample(range(1, 9), 2))
    batches = sorted(rng.sample(range(1, 65), 3))
    path = write(
        tmp_path,
        f"[point]\nmethod = ['sigmoid-ring', 'softmax-allgather']\nworld = {worlds}\n"
        f"batch = {batches}\ndim = [8, 16]\noverlap = [true, false]\ntile = ['b', 4]\n",
    )
    config = sweep_config.load(path)
    points = config.grid()
    ring = [p for p in points if p.method == "sigmoid-ring"]
    gather = [p for p in points if p.method == "softmax-allgather"]
    assert len(ring) == 2 * 3 * 2 * 2 * 2
    assert len(gather) == 2 * 3 * 2
    assert {(p.overlap, p.tile) for p in ring} == {
        (True, None),
        (False, None),
        (True, 4),
        (False, 4),
    }
    assert {(p.overlap, p.tile) for p in gather} == {(None, None)}
    assert [p.world for p in points] == sorted(p.world for p in points)
    assert config.name == "sweep"


def test_max_global_batch_drops_points_and_emulated_grid_covers_the_ladder(tmp_path):
    path = write(
        tmp_path,
        "[run]\nmax_global_batch = 64\nemulated_world = [16]\n"
        "[point]\nmethod = 'sigmoid-ring'\nworld = [1, 2, 4]\nbatch = [8, 32]\ndim = 8\n",
    )
    config = sweep_config.load(path)
    assert all(p.global_batch <= 64 for p in config.grid())
    assert len(config.grid()) == 5  # (1,8) (1,32) (2,8) (2,32) (4,8)
    emulated = config.emulated_grid()
    assert [(p.world, p.batch, p.emulate) for p in emulated] == [
        (16, 8, "stand-in"),
        (16, 32, "stand-in"),
    ]


P = "[point]\nworld = 1\nbatch = 8\ndim = 8\n"
"""A valid [point] table; BAD's entries add to it or replace it."""
BAD = [
    (P + "wrold = 3\n", "unknown key 'wrold'", "known: method"),
    ("[point]\nworld = 'two'\nbatch = 8\ndim = 8\n", "world: expected an integer", "'two'"),
    (P + "steps = true\n", "steps: expected an integer", "True"),
    ("[point]\nworld = []\nbatch = 8\ndim = 8\n", "world: empty list", "grid is empty"),
    (P + "method = []\n", "method: empty list", "grid is empty"),
    (P + "method = ['sigmoid-rnig']\n", "method: unknown value 'sigmoid-rnig'", "sigmoid-ring"),
    (P + "dtype = 'fp8'\n", "dtype: unknown value 'fp8'", "fp32"),
    (P + "device = 'tpu'\n", "device: unknown value 'tpu'", "cuda"),
    ("[point]\nworld = 1\nbatch = 0\ndim = 8\n", "batch: 0 is below the minimum", ""),
    ("[point]\nworld = 1\ndim = 8\n", "no 'batch'", "a list"),
    (P + "tile = 0\n", "tile = 0 is the old spelling", "tile = 'b'"),
    (P + "timeout_s = 0\n", "timeout_s: must be above 0 seconds", "0.0"),
    ("[run]\nmax_global_batch = 1\n" + P, "max_global_batch", "grid is empty"),
    ("[run]\nwarmup = 1\n" + P, "'warmup' is a point field", "[point]"),
    ("[run]\nspeed = 1\n" + P, "unknown key 'speed'", "emulated_world"),
    ("[point\n", "not valid TOML", ""),
    # the flat dialect before the one TOML shape: each refused, naming the new key
    ("worlds = [1, 2]\n", "'worlds' is the old spelling", "world = "),
    ("methods = ['sigmoid-ring']\n", "'methods' is the old spelling", "method = "),
    ("tiles = [0]\n", "'tiles' is the old spelling", "tile = "),
    ("emulated_worlds = [16]\n", "'emulated_worlds' is the old spelling", "emulated_world"),
    ("cross_check = false\n", "'cross_check' is the old spelling", "profile = "),
    ("backend = 'gloo'\n", "'backend' is gone", "device"),
    ("steps = 3\n" + P, "'steps' at the top is the old spelling", "[point]"),
    ("description = 'x'\n" + P, "'description' at the top is the old spelling", "[run]"),
    (P + "emulated = true\n", "'emulated' is the old spelling", "emulate = 'stand-in'"),
]


@pytest.mark.parametrize(("text", "expected", "also"), BAD)
def test_bad_config_gives_one_line_naming_the_key(tmp_path, text, expected, also):
    path = write(tmp_path, text)
    assert sweep_config.ConfigError is ConfigError  # one class, defined once
    with pytest.raises(ConfigError) as caught:
        sweep_config.load(path)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message and also in message
    assert message.startswith("sweep.toml: ")


def test_cli_exits_2_with_the_line_on_stderr(tmp_path, capsys):
    path = write(tmp_path, P + "method = ['nope']\n")
    status = main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "method: unknown value 'nope'" in err and "softmax-ring" in err
    assert not (tmp_path / "runs").exists()


def test_missing_config_names_the_shipped_ones(capsys):
    assert main(["run", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "default" in err and "smoke" in err
