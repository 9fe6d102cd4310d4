"""Trials end to end, on the shipped demo (+experiment=support_agent: a support agent whose
fake model answers differently per trial; two prompts equally good, one better): threads and
dirs per trial, extending trials runs only the new ones, a rerun of a trial gives the same
commit, and `wtb compare`'s statistics agree with scipy run on the raw scores."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import copy_project, run_bench, wtb
from scipy import stats as sp
from test_report import assert_self_contained, open_page, report

from wtb_conf.store import open_store

pytestmark = pytest.mark.slow
CASES = ("returns", "shipping", "warranty", "cancel", "exchange")


@pytest.fixture(scope="module")
def agent(tmp_path_factory) -> Path:
    """The demo as shipped: 3 prompts x 5 questions x 10 trials. Tests that add sweeps do
    it in a copy (`own`)."""
    project = copy_project(tmp_path_factory.mktemp("agent"))
    proc = run_bench(project, "-m", "+experiment=support_agent")
    (project / "sweep.out").write_text(proc.stdout)
    return project


@pytest.fixture
def own(agent, tmp_path) -> Path:
    return Path(shutil.copytree(agent, tmp_path / "agent"))


def compare_json(project: Path, *args: str) -> list[dict]:
    return json.loads(wtb(project, "compare", *args, "--json").stdout)


def store_of(project: Path):
    return open_store(str(project / "data/wtb.db"), project / "data/blobs", readonly=True)


def test_each_trial_is_its_own_thread_dir_and_seed(agent):
    rows = compare_json(agent)
    assert [r["params"]["variant"] for r in rows] == ["agent_terse", "agent_friendly",
                                                      "agent_cite"]
    with store_of(agent) as store:
        threads = store.threads(rows[0]["run_id"])
        job_dir = Path(store.run(rows[0]["run_id"])["job_dir"])
    assert sorted(t["thread_id"] for t in threads) == sorted(
        f"{rows[0]['run_id']}/{case}/{trial}" for case in CASES for trial in range(10))
    assert {t["status"] for t in threads} == {"completed"}
    assert (job_dir / "out/returns/7/answer.md").is_file()
    assert rows[0]["trials"] == 10 and rows[0]["stats"]["correct"]["n"] == 50


def by_key(case_rows: list[dict], run_id: str, name: str) -> dict[str, bool]:
    return {r["case"]: r["scores"][name] for r in case_rows if r["run_id"] == run_id}


def test_the_statistics_are_scipys_on_the_raw_scores(agent):
    rows = compare_json(agent)  # (compare.baseline: variant=agent_terse, from the experiment)
    raw = compare_json(agent, "--cases")
    terse, friendly, cite = rows
    values = {r["run_id"]: by_key(raw, r["run_id"], "correct") for r in rows}
    for row in rows:
        passed = list(values[row["run_id"]].values())
        ci = sp.binomtest(sum(passed), len(passed)).proportion_ci(0.95, method="wilson")
        described = row["stats"]["correct"]
        assert described["mean"] == pytest.approx(sum(passed) / 50)
        assert described["ci"] == pytest.approx([ci.low, ci.high])
        words = [r["metrics"]["words"] for r in raw if r["run_id"] == row["run_id"]]
        low, high = sp.t.interval(0.95, 49, loc=sum(words) / 50, scale=sp.sem(words))
        assert row["stats"]["words"]["ci"] == pytest.approx([low, high])

    def mcnemar(a: dict, b: dict) -> float:
        only_a = sum(a[k] and not b[k] for k in a)
        only_b = sum(b[k] and not a[k] for k in a)
        return sp.binomtest(only_a, only_a + only_b, 0.5).pvalue

    # every job against the terse baseline, Holm over the table's tests
    p = {r["run_id"]: mcnemar(values[r["run_id"]], values[terse["run_id"]])
         for r in (friendly, cite)}
    for row in (friendly, cite):
        assert row["vs_baseline"]["correct"]["p"] == pytest.approx(p[row["run_id"]])
    # friendly is ahead of terse by its mean, but not by a test: the bench says so
    assert friendly["stats"]["correct"]["mean"] > terse["stats"]["correct"]["mean"]
    assert not friendly["vs_baseline"]["correct"]["significant"]
    assert cite["vs_baseline"]["correct"]["significant"]
    # cite is best: ahead of the runner-up (friendly) by McNemar's test
    assert [r["best"] for r in rows] == [False, False, True]
    assert cite["vs_next"]["run_id"] == friendly["run_id"]
    assert cite["vs_next"]["p"] == pytest.approx(mcnemar(values[cite["run_id"]],
                                                         values[friendly["run_id"]]))
    out = (agent / "sweep.out").read_text()
    assert "best: job 2 (run " in out and "ahead of the next by +" in out


def test_the_best_by_mean_that_no_test_backs_is_not_best(own):
    # the two equally good prompts alone (cache hits: nothing runs)
    proc = run_bench(own, "-m", "workflow=support_agent",
                     "variant=agent_terse,agent_friendly", "compare.objective=correct")
    assert "2 of 2 jobs completed (2 cached)" in proc.stdout
    rows = compare_json(own)
    assert rows[1]["stats"]["correct"]["mean"] > rows[0]["stats"]["correct"]["mean"]
    assert not any(r["best"] for r in rows) and all(r["tied"] for r in rows)
    assert rows[1]["vs_next"]["p"] >= 0.05 and rows[1]["vs_next"]["more_trials"] >= 1
    text = wtb(own, "compare").stdout
    assert "no best job on correct: job 1 is tied with job 0 (top two: +" in text
    assert "more trial(s) per case would tell the top two apart" in text


def test_gates_and_ci_formats(agent):
    sweep = compare_json(agent)[0]["sweep_id"]
    held = wtb(agent, "compare", sweep, "--fail-if", "correct < baseline - 0.05")
    assert 'gate "correct < baseline - 0.05" held on 2 job(s)' in held.stdout
    # on the means friendly is above terse: a gate that asks for +0.2 fails it
    failed = wtb(agent, "compare", sweep, "--fail-if", "correct < baseline + 0.2",
                 "--gate-on", "mean", code=1)
    assert 'gate "correct < baseline + 0.2" failed on job 1 (run ' in failed.stdout
    xml = wtb(agent, "compare", sweep, "--format", "junit").stdout
    suite = ET.fromstring(xml)
    assert suite.tag == "testsuite" and int(suite.get("tests")) == 3 * 50
    assert len(suite.findall("testcase")) == 150
    wrong = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(wrong) and wrong
    assert wrong[0].find("failure").get("message") == "correct is false"
    md = wtb(agent, "compare", sweep, "--format", "markdown").stdout
    assert md.startswith(f"### sweep {sweep[:8]} — baseline variant=agent_terse\n")
    assert "**Best:** job 2 variant=agent_cite: correct = " in md


@pytest.mark.parametrize(("args", "message"), [
    (("--baseline", "variant=nope"),
     "wtb: error: baseline variant=nope: no job has those params; valid values: variant: "
     "agent_cite, agent_friendly, agent_terse"),
    (("--baseline", "9"),
     "wtb: error: baseline 9: no job 9; valid: a job number of the table (0, 1, 2) or a run id"),
    (("--baseline", "experiment=support_agent"),
     "wtb: error: baseline experiment=support_agent: 3 jobs (0, 1, 2) have those params; add "
     "another KEY=VALUE to pick one, or give a job number"),
    (("--fail-if", "accuracy < baseline"),
     "wtb: error: --fail-if 'accuracy < baseline': 'accuracy' is not a metric, score or rate "
     "of these jobs; valid: words, correct, pass_rate, success_rate"),
])
def test_a_bad_baseline_or_gate_is_one_line(agent, args, message):
    sweep = compare_json(agent)[0]["sweep_id"]
    proc = wtb(agent, "compare", sweep, *args, code=1)
    assert proc.stderr.strip().splitlines() == [message] and proc.stdout == ""


def test_the_reports_case_view_opens_a_cell_on_its_trials_final_state(agent, tmp_path,
                                                                      browser):
    rows = compare_json(agent)
    cite = rows[2]
    out = tmp_path / "report.html"
    html = report(agent, out)
    assert_self_contained(html)
    with store_of(agent) as store:
        finals = {t["case"]: t["final_state"] for t in store.threads(cite["run_id"])}
    for width in (1400, 800):
        page, requests = open_page(browser, out)
        page.set_viewport_size({"width": width, "height": 1000})
        assert requests == [out.as_uri()]
        # nothing wider than the window: wide tables scroll inside their own box
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        grid = page.locator("#cases-grid")
        assert grid.locator("tbody tr").count() == len(CASES)
        assert grid.locator("thead th").all_inner_texts()[1:] == [
            "#0 agent_terse", "#1 agent_friendly", "#2 agent_cite"]
        cell = grid.locator("tbody tr", has_text="returns").locator("td").nth(2)
        assert "correct " in cell.inner_text() and "10 trials" in cell.inner_text()
        cell.locator("a").click()
        detail = page.locator(f"#cell-{cite['run_id'][:8]}-returns")
        assert detail.get_attribute("open") is not None  # the link opened it
        text = detail.inner_text()
        assert '"question": "How many days do I have to return an order?"' in text
        assert '"fact": "30 days"' in text  # expected
        first = detail.locator(".trial").first.inner_text()
        key = first.split()[0]
        assert key.startswith("returns/") and finals[key]["answer"] in first
        assert "answer.md" in first and "nodes: " in first  # outputs inline, a timeline
        page.screenshot(path=str(tmp_path / f"cases-{width}.png"))
        page.close()
    # the charts: a dot and its interval per job, the baseline dashed
    assert html.count("<svg") >= 4 and "baseline" in html


def test_a_configured_baseline_the_sweep_lacks_is_a_note_not_an_error(own):
    # one of the experiment's jobs alone (a cache hit): its compare.baseline names no job here
    run_bench(own, "-m", "+experiment=support_agent", "variant=agent_cite")
    proc = wtb(own, "compare")
    assert ("compare.baseline variant=agent_terse: no job has those params; valid values: no "
            "param varies: compared without a baseline (--baseline names one)") in proc.stdout
    assert "best: job 0 (run " in proc.stdout
    # named on the command line, the same is an error
    proc = wtb(own, "compare", "--baseline", "variant=agent_terse", code=1)
    assert proc.stderr.startswith("wtb: error: baseline variant=agent_terse: no job has")
