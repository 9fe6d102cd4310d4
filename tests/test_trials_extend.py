"""Trials in projects of their own: extending trials runs only the new ones (counted in node
events), a rerun gives each trial's commit again, a fork after a node forks trial by trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_project, run_bench, wtb

from wtb_conf.store import open_store

pytestmark = pytest.mark.slow


def compare_json(project: Path, *args: str) -> list[dict]:
    return json.loads(wtb(project, "compare", *args, "--json").stdout)


def store_of(project: Path):
    return open_store(str(project / "data/wtb.db"), project / "data/blobs", readonly=True)


def node_events(project: Path, run_id: str) -> list[str]:
    with store_of(project) as store:
        return [e["data"]["thread_id"] for e in store.events(run_id) if e["kind"] == "node"]


def test_extending_trials_runs_only_the_new_ones_and_a_rerun_gives_the_same_commits(
        tmp_path):
    project = copy_project(tmp_path)
    args = ("-m", "workflow=support_agent", "variant=agent_cite")
    run_bench(project, *args, "trials=2")
    [two] = compare_json(project)
    assert len(node_events(project, two["run_id"])) == 5 * 2 * 2  # lookup and answer
    run_bench(project, *args, "trials=3")
    [three] = compare_json(project)
    ran = node_events(project, three["run_id"])
    assert len(ran) == 5 * 1 * 2  # trial 2 only
    assert {t.rsplit("/", 1)[1] for t in ran} == {"2"}
    assert three["stats"]["correct"]["n"] == 15
    with store_of(project) as store:
        before = {t["case"]: t["commit"] for t in store.threads(three["run_id"])}
        old = {t["case"]: t["commit"] for t in store.threads(two["run_id"])}
    assert {k: before[k] for k in old} == old  # the reused trials are the stored ones

    wtb(project, "rerun", three["run_id"])
    [again] = compare_json(project)
    assert again["run_id"] != three["run_id"]
    assert len(node_events(project, again["run_id"])) == 5 * 3 * 2  # all of it ran again
    with store_of(project) as store:
        after = {t["case"]: t["commit"] for t in store.threads(again["run_id"])}
    assert after == before  # each trial drew the same: the same files, the same commits


def test_a_fork_after_a_node_forks_each_trial_from_its_own_checkpoint(tmp_path):
    project = copy_project(tmp_path)
    args = ("-m", "workflow=support_agent", "variant=agent_cite", "trials=2")
    run_bench(project, *args)
    [parent] = compare_json(project)
    run_bench(project, *args, f"+fork.run={parent['run_id']}", "+fork.after=lookup")
    [fork] = compare_json(project)
    with store_of(project) as store:
        threads = store.threads(fork["run_id"])
        parents = {t["case"]: t for t in store.threads(parent["run_id"])}
    assert sorted(t["case"] for t in threads) == sorted(parents)
    for t in threads:  # trial t of a case from trial t of that case, after lookup
        assert t["parent_thread"] == parents[t["case"]]["thread_id"]
        assert t["inherited"] == ["lookup"]
    assert len(node_events(project, fork["run_id"])) == 5 * 2  # answer only
    # the same draws again: answer ran under the same seed in the same trial
    assert {t["case"]: t["final_state"] for t in threads} == {
        k: t["final_state"] for k, t in parents.items()}
