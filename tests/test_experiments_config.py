"""Sweep configs: shipped files load, the grid is the product it should be, and every kind
of bad config (unknown key, wrong type, empty grid, unknown method) is refused with one
line that names the key and the allowed values, also through the command line (exit 2)."""

from __future__ import annotations

import random

import pytest

from experiments import config as sweep_config
from experiments.cli import main
from profiling.losses import METHODS


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
    assert set(config.worlds) == {1, 2, 4, 8}
    assert set(config.resolved_methods()) == set(METHODS)
    assert len(config.batches) >= 3


def test_grid_is_the_product_and_options_vary_only_for_ring_methods(tmp_path):
    rng = random.Random(7)
    worlds = sorted(rng.sample(range(1, 9), 2))
    batches = sorted(rng.sample(range(1, 65), 3))
    path = write(
        tmp_path,
        f"methods = ['sigmoid-ring', 'softmax-allgather']\nworlds = {worlds}\n"
        f"batches = {batches}\ndims = [8, 16]\noverlap = [true, false]\ntiles = [0, 4]\n",
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
    assert {(p.overlap, p.tile) for p in gather} == {(True, None)}
    assert [p.world for p in points] == sorted(p.world for p in points)
    assert config.name == "sweep"


def test_max_global_batch_drops_points_and_emulated_grid_covers_the_ladder(tmp_path):
    path = write(
        tmp_path,
        "methods = ['sigmoid-ring']\nworlds = [1, 2, 4]\nbatches = [8, 32]\ndims = [8]\n"
        "max_global_batch = 64\nemulated_worlds = [16]\n",
    )
    config = sweep_config.load(path)
    assert all(p.global_batch <= 64 for p in config.grid())
    assert len(config.grid()) == 5  # (1,8) (1,32) (2,8) (2,32) (4,8)
    emulated = config.emulated_grid()
    assert [(p.world, p.batch, p.emulated) for p in emulated] == [(16, 8, True), (16, 32, True)]


BAD = [
    ("worlds = [1]\nwrold = 3\n", "unknown key 'wrold'", "allowed keys:"),
    ("worlds = 4\n", "worlds: expected a list of integers", "4"),
    ("worlds = [1, 'two']\n", "worlds: expected a list of integers", "'two'"),
    ("steps = true\n", "steps: expected an integer", "True"),
    ("worlds = []\n", "worlds: empty list", "grid is empty"),
    ("methods = []\n", "methods: empty list", "sigmoid-ring"),
    ("methods = ['sigmoid-rnig']\n", "methods: unknown value 'sigmoid-rnig'", "sigmoid-ring"),
    ("dtypes = ['fp8']\n", "dtypes: unknown value 'fp8'", "fp32"),
    ("backend = 'mpi'\n", "backend: unknown value 'mpi'", "gloo"),
    ("batches = [0]\n", "batches: 0 is below the minimum 1", ""),
    ("max_global_batch = 1\nbatches = [4]\n", "max_global_batch", "grid is empty"),
    ("worlds = [1\n", "not valid TOML", ""),
]


@pytest.mark.parametrize(("text", "expected", "also"), BAD)
def test_bad_config_gives_one_line_naming_the_key(tmp_path, text, expected, also):
    path = write(tmp_path, text)
    with pytest.raises(sweep_config.ConfigError) as caught:
        sweep_config.load(path)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message and also in message
    assert message.startswith("sweep.toml: ")


def test_cli_exits_2_with_the_line_on_stderr(tmp_path, capsys):
    path = write(tmp_path, "methods = ['nope']\n")
    status = main(["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "methods: unknown value 'nope'" in err and "softmax-ring" in err
    assert not (tmp_path / "runs").exists()


def test_missing_config_names_the_shipped_ones(capsys):
    assert main(["run", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "default" in err and "smoke" in err
