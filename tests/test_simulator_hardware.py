"""Hardware profiles: the bundled files load with a source for every number, and broken
files (missing key, wrong unit, bad value, unit slip) are refused with one clear line."""

from __future__ import annotations

import json

import pytest

from simulator import hardware
from simulator.hardware import HardwareError, load_profile, parse_profile, resolve_hardware
from tests.simulator_fakes import profile_dict


def _count_numbers(node) -> int:
    if isinstance(node, dict) and set(node) == {"value", "source"}:
        return 1
    if isinstance(node, dict):
        return sum(_count_numbers(v) for v in node.values())
    return 0


@pytest.mark.parametrize("name", ["h100-sxm", "a100-sxm-80gb"])
def test_bundled_profiles_load_with_sources(name):
    path = hardware.BUNDLED_DIR / f"{name}.json"
    profile = load_profile(path)
    assert profile.name == name
    assert profile.backend == "nccl" and profile.ranks_per_node == 8
    assert len(profile.sources) == _count_numbers(json.loads(path.read_text()))
    assert all(s.strip() for s in profile.sources.values())
    # NCCL's ring latency: 8.4 us base + 3.4 us per NVLink step (tuning.cc)
    assert profile.intra_node.all_gather.base_s == pytest.approx(8.4e-6)
    assert profile.intra_node.all_gather.alpha_s == pytest.approx(3.4e-6)
    assert profile.inter_node.all_gather.alpha_s == pytest.approx(14e-6)


def test_h100_figures_from_the_datasheet():
    h100 = resolve_hardware("h100-sxm")
    assert h100.compute.matmul_flops_per_s["bf16"] == pytest.approx(989e12)
    assert h100.intra_node.link.bandwidth_Bps == pytest.approx(450e9)
    assert 1 / h100.intra_node.all_gather.beta_s_per_byte == pytest.approx(370e9, rel=1e-3)
    assert h100.inter_node.link.bandwidth_Bps == pytest.approx(50e9)
    assert h100.memory_bytes == 80 * 2**30


def _write(tmp_path, data, name="broken.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _error(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(HardwareError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_key_is_named(tmp_path):
    data = profile_dict()
    del data["intra_node"]["p2p"]["alpha_us"]
    assert "missing key 'intra_node.p2p.alpha_us'" in _error(tmp_path, data)


def test_wrong_unit_suffix_is_named(tmp_path):
    data = profile_dict()
    link = data["inter_node"]["link"]
    link["bandwidth_Gbps"] = link.pop("bandwidth_GBps")
    message = _error(tmp_path, data)
    assert "'inter_node.link.bandwidth_Gbps' has the wrong unit" in message
    assert "'inter_node.link.bandwidth_GBps'" in message


def test_number_without_source_is_refused(tmp_path):
    data = profile_dict()
    data["memory_GiB"] = 80
    assert "'memory_GiB' must be an object" in _error(tmp_path, data)
    data["memory_GiB"] = {"value": 80, "source": " "}
    assert "'memory_GiB' has no source" in _error(tmp_path, data)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("memory_GiB", -1, "must not be negative"),
        ("cores", 2.5, "whole number"),
        ("compute.phase_overhead_us", {"value": "fast", "source": "x"}, "must be a number"),
        ("intra_node.p2p.duplex_efficiency", 1.5, "duplex_efficiency"),
        # 0.1 us/MB would be 10,000 GB/s, faster than the 450 GB/s link: a unit slip
        ("intra_node.all_gather.beta_us_per_MB", 0.1, "faster than the link"),
    ],
)
def test_bad_values_are_refused(tmp_path, key, value, expected):
    assert expected in _error(tmp_path, profile_dict(**{key: value}))


def test_unknown_dtype_and_unknown_key(tmp_path):
    assert "unknown dtype key" in _error(
        tmp_path, profile_dict(**{"compute.matmul_TFLOPs.int8": 100})
    )
    data = profile_dict()
    data["colour"] = "blue"
    assert "unknown key 'colour'" in _error(tmp_path, data)


def test_broken_json_and_missing_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(HardwareError, match="not valid JSON"):
        load_profile(path)
    with pytest.raises(HardwareError, match="cannot read"):
        load_profile(tmp_path / "absent.json")


def test_resolve_by_name_path_object_and_default(tmp_path, monkeypatch):
    path = _write(tmp_path, profile_dict(name="custom"), "custom.json")
    assert resolve_hardware(str(path)).name == "custom"
    profile = parse_profile(profile_dict(), "<dict>")
    assert resolve_hardware(profile) is profile
    with pytest.raises(HardwareError, match="unknown hardware 'tpu-v9'"):
        resolve_hardware("tpu-v9")
    # default: this host's calibrated profile when it exists, else h100-sxm
    monkeypatch.setattr(hardware, "CACHE_DIR", tmp_path / "cache")
    assert resolve_hardware(None).name == hardware.DEFAULT_PROFILE
    own = hardware.host_profile_path()
    own.parent.mkdir(parents=True)
    own.write_text(json.dumps(profile_dict(name="this-host")))
    assert resolve_hardware(None).name == "this-host"


def test_memory_reserve_is_optional_sourced_and_counted_in_fits(tmp_path):
    data = profile_dict()
    del data["memory_reserve"]
    absent = parse_profile(data, "no reserve")
    assert absent.memory_reserve.reserve_bytes(8) == 0
    bundled = resolve_hardware("h100-sxm")
    reserve = bundled.memory_reserve
    assert reserve.context_bytes > 0 and reserve.nccl_peer_buffers_bytes > 0
    assert reserve.reserve_bytes(1) == reserve.context_bytes  # no peers at W = 1
    assert reserve.reserve_bytes(2) == reserve.context_bytes + reserve.nccl_peer_buffers_bytes
    assert "measured" in bundled.sources["memory_reserve.context_GiB"]
    assert "estimate" in bundled.sources["memory_reserve.nccl_peer_buffers_GiB"]
    data = profile_dict(**{"memory_reserve.context_GiB": -1})
    assert "'memory_reserve.context_GiB' must not be negative" in _error(tmp_path, data)

    from simulator.model import predict

    # a peak that fits the device alone but not beside the reserve: fits is False
    free = bundled.memory_bytes - reserve.reserve_bytes(8)
    p = predict("sigmoid-allgather", 8, 36000, 1024, "fp32", bundled)
    assert free < float(p.peak_memory_bytes) <= bundled.memory_bytes
    assert not bool(p.fits)
    assert float(p.memory_reserve_bytes) == reserve.reserve_bytes(8)
    smaller = predict("sigmoid-allgather", 8, 30000, 1024, "fp32", bundled)
    assert float(smaller.peak_memory_bytes) <= free and bool(smaller.fits)
