"""The netns suite's tests shared among VMs: each test once, in order, the shards' work about equal."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netns_tests.harness import vmshards


def test_one_vm_runs_everything_in_order_with_the_timing_tests_last():
    assert vmshards.shard(["a", "b", "c"], ["t"], 1, {}) == [["a", "b", "c", "t"]]


def test_longest_first_evens_out_the_shards_and_keeps_the_given_order_within_each():
    costs = {"a": 270, "b": 80, "c": 80, "d": 270, "e": 100, "f": 100}
    placed = vmshards.shard(list("abcdef"), ["t"], 2, costs)
    assert sorted(placed[0] + placed[1]) == sorted("abcdeft")
    assert placed[0][-1] == "t"
    loads = [sum(costs.get(t, 0) for t in shard) for shard in placed]
    assert loads == [450, 450]
    for shard in placed:
        order = [t for t in "abcdeft" if t in shard]
        assert shard == order


def test_a_vm_that_starts_late_gets_less_work():
    costs = {t: 100.0 for t in "abcdef"}
    placed = vmshards.shard(list("abcdef"), [], 2, costs, late_start=200.0)
    assert [len(shard) for shard in placed] == [4, 2]  # the first: 400 s from 0; the second: 200 s from 200
    assert vmshards.host_part_seconds(0, 0) == 0.0 < vmshards.host_part_seconds(2400, 110)
    # and a slower one too: 500 s on the first from 0 against 200 s (100 s each at 2x) from 200 on the second
    placed = vmshards.shard(list("abcdef"), [], 2, costs, late_start=200.0, late_relative_time=2.0)
    assert [len(shard) for shard in placed] == [5, 1]


def test_an_unmeasured_test_costs_the_median_of_the_measured_ones():
    placed = vmshards.shard(["new", "a", "b", "c"], [], 2, {"a": 10, "b": 100, "c": 300})
    # new costs 100: c alone on one VM, a + b + new on the other.
    assert sorted(map(sorted, placed)) == [["a", "b", "new"], ["c"]]


def test_fewer_tests_than_vms_leaves_vms_empty_and_no_vm_is_asked_for():
    with pytest.raises(ValueError, match="at least 1"):
        vmshards.shard(["a"], [], 0, {})
    assert vmshards.shard(["a"], [], 3, {}) == [["a"], [], []]


@given(st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(0, 400), max_size=30),
       st.integers(1, 4))
def test_every_test_is_placed_exactly_once_and_no_shard_exceeds_the_best_by_more_than_one_test(costs, shards):
    tests = sorted(costs)
    placed = vmshards.shard(tests, [], shards, {k: float(v) for k, v in costs.items()})
    assert sorted(t for shard in placed for t in shard) == tests
    loads = [sum(costs[t] for t in shard) for shard in placed]
    # LPT: the fullest shard is at most one test over the emptiest one.
    assert max(loads) - min(loads) <= max(costs.values(), default=0)


def test_the_costs_file_is_refreshed_from_a_guest_report(tmp_path, monkeypatch):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"exitstatus": 1, "tests": {
        "x::passed": {"outcome": "passed", "duration": 12.4},
        "x::failed": {"outcome": "failed", "duration": 3.0}}}))
    costs_file = tmp_path / "vm_costs.json"
    costs_file.write_text(json.dumps({"x::old": 5}))
    monkeypatch.setattr(vmshards, "COSTS_FILE", costs_file)
    assert vmshards.main(["vmshards", str(report)]) == 0
    assert json.loads(costs_file.read_text()) == {"x::old": 5, "x::passed": 12}
    assert vmshards.load_costs(costs_file) == {"x::old": 5.0, "x::passed": 12.0}
    costs_file.write_text("not json")
    assert vmshards.load_costs(costs_file) == {}


def test_the_shipped_costs_name_only_tests_of_the_suite():
    costs = vmshards.load_costs()
    assert costs, "netns_tests/harness/vm_costs.json is missing or empty"
    for node in costs:
        path = node.split("::", 1)[0]
        assert (vmshards.COSTS_FILE.parents[2] / path).is_file(), node
