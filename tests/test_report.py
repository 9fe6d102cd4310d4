"""`wtb report`, the way a person sees it: the CLI writes the file, a real headless Chromium
opens it from file://, and the test reads, clicks and measures what is on the page."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from conftest import run_bench, wtb

from wtb_conf.results import compare
from wtb_conf.results import report as report_module
from wtb_conf.results.report import node_durations
from wtb_conf.store import open_store

TESTS = Path(__file__).resolve().parent


def report(project: Path, out: Path, *sweeps: str) -> str:
    """`wtb report` in the project directory, as a user runs it; the HTML it wrote."""
    proc = wtb(project, "report", *sweeps, "--out", str(out))
    assert f"wrote {out}" in proc.stdout
    assert not list(out.parent.glob(f".{out.name}.*"))  # the temporary file was renamed
    return out.read_text()


def assert_self_contained(html: str) -> None:
    for loads in ('src="http', "src='http", 'href="http', "<script src", '<link rel="stylesheet"',
                  "@import", "url(http"):
        assert loads not in html, loads


def open_page(browser, path: Path, dialogs: list[str] | None = None):
    """The report in a new page, and the list of every URL the page requested; `dialogs`
    gets the message of each dialog the page opens (alert() and the like)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    if dialogs is not None:
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    return page, requests


def job_order(page) -> list[int]:
    return [int(t) for t in page.locator("#comparison tbody tr td:first-child").all_inner_texts()]


@pytest.mark.slow
def test_demo_report_in_a_browser(demo, tmp_path, browser):
    with open_store(str(demo / "data/wtb.db"), demo / "data/blobs", readonly=True) as store:
        sweep = store.runs()[0]["sweep_id"]  # the demo sweep (other tests may add sweeps)
        rows, _ = compare.rows(store, [sweep])
    out = tmp_path / "report.html"
    html = report(demo, out, sweep)
    assert_self_contained(html)
    assert out.stat().st_size < 1_000_000

    page, requests = open_page(browser, out)
    assert requests == [out.as_uri()]  # nothing fetched: no CDN, no fonts, no scripts
    objective = rows[0]["objective"]
    title = page.title()
    # two cases run once: no difference a paired test calls real, so no best job (test_judge)
    assert sweep[:8] in title and f"no best job on {objective}" in title

    assert page.locator("#comparison tbody tr").count() == len(rows) == 4
    assert job_order(page) == [0, 1, 2, 3]
    assert page.locator("#comparison tbody tr", has_text="★").count() == 0

    # sort by the objective: ascending, ties in job order; a second click reverses
    ascending = [r["job_num"] for r in sorted(rows, key=lambda r: compare.value_of(r, objective))]
    assert ascending != [0, 1, 2, 3]
    header = page.locator(f'#comparison th[title="{objective}"]')
    header.click()
    assert job_order(page) == ascending
    assert header.get_attribute("aria-sort") == "ascending"
    page.locator('#comparison th[title="job"]').click()
    page.locator('#comparison th[title="job"]').click()
    assert job_order(page) == [3, 2, 1, 0]

    # a chart per numeric column, and the node durations; each drawn with a real size
    svgs = page.locator("svg")
    assert svgs.count() == len(compare.numeric_columns(rows)) + 1
    for i in range(svgs.count()):
        box = svgs.nth(i).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, (i, box)
    chart_text = page.locator("#charts ~ .charts").first.inner_text()
    assert objective in chart_text and "drop_invalid" in chart_text  # text stays text

    durations = page.locator("#durations ~ .charts table").inner_text()
    assert all(node in durations for node in ("load", "clean", "validate", "summarize"))
    assert "No failures" in page.locator("#failures + p").inner_text()
    first = page.locator(f"#run-{rows[0]['run_id'][:8]}")
    short = rows[0]["run_id"][:8]
    assert f"wtb restore {short} --to run-{short}" in first.inner_text()
    files = first.locator("details")
    assert "orders/summary.json" not in files.inner_text()  # collapsed until clicked
    files.locator("summary").click()
    assert "orders/summary.json" in files.inner_text()
    forked = [r for r in rows[1:] if f"{short}/orders, inherited load" in
              page.locator(f"#run-{r['run_id'][:8]}").inner_text()]
    assert forked  # the shared prefix: later jobs forked from job 0's checkpoints

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    page.close()


FLAKY = """
state:
  x: int
nodes:
  add: {_target_: flows.add, amount: 1}
  step: {_target_: flows.boom}
edges: [[START, add], [add, step], [step, END]]
cases:
  one: {x: 1}
  two: {x: 5}
metrics: {x: x}
evaluators:
  has_y: {_target_: flows.reads_y}  # fails on every case (a key naming no field is refused)
"""


@pytest.mark.slow
def test_failures_are_shown_with_traceback_node_and_red_row(tmp_path, browser, monkeypatch):
    project = tmp_path / "flaky"
    (project / "conf/workflow").mkdir(parents=True)
    (project / "conf/workflow/flaky.yaml").write_text(textwrap.dedent(FLAKY))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))  # `flows` imports
    proc = run_bench(project, "-m", "workflow=flaky", "compare.objective=x",
                     "workflow.nodes.step._target_=flows.boom,flows.double",
                     "hydra/launcher=basic", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    with open_store(str(project / "data/wtb.db"), project / "data/blobs") as store:
        failed, ok = store.runs(store.last_sweep())
        threads = store.threads(failed["run_id"])
    assert failed["status"] == "failed" and ok["status"] == "completed"

    out = tmp_path / "out" / "flaky.html"  # a directory that does not exist yet
    html = report(project, out)
    assert_self_contained(html)
    page, requests = open_page(browser, out)
    assert requests == [out.as_uri()]

    red = page.locator(f'#comparison tr[data-run="{failed["run_id"]}"]')
    assert "failed" in (red.get_attribute("class") or "")
    color = red.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
    assert color == "rgb(248, 215, 218)"
    assert "★" in page.locator(f'#comparison tr[data-run="{ok["run_id"]}"]').inner_text()

    text = page.locator("body").inner_text()
    for t in threads:
        assert t["status"] == "failed" and t["failed_node"] == "step"
        assert f"case {t['case']} failed in node step: {t['error']}" in text
        assert t["traceback"].strip() in text  # the whole traceback, as recorded
    assert 'raise ValueError(f"boom at x={state[\'x\']}")' in text
    assert "evaluator has_y KeyError" in text  # the evaluator's error, per case
    assert f"{failed['run_id'][:8]}" in page.locator("#failures ~ h3.bad").first.inner_text()
    assert page.locator("svg").count() >= 2  # x and success_rate, the failed job's bar empty
    page.close()


def test_node_durations_are_the_gaps_to_the_previous_event_of_the_same_case():
    def ev(at: str, kind: str, thread: str | None, node: str | None = None) -> dict:
        data = {"thread_id": thread, "node": node} if thread else {}
        return {"at": f"2026-01-01T00:00:{at}+00:00", "kind": kind, "data": data}

    events = [ev("00.000", "run_started", None), ev("00.100", "commit", "r/a"),
              ev("00.200", "commit", "r/b"), ev("00.400", "node", "r/a", "load"),
              ev("00.500", "commit", "r/a"), ev("01.000", "node", "r/b", "load"),
              ev("01.250", "node", "r/a", "clean"), ev("02.000", "run_completed", None)]
    got = node_durations(events)
    assert got.keys() == {"load", "clean"}
    assert [round(s, 3) for s in got["load"]] == [0.3, 0.8]
    assert [round(s, 3) for s in got["clean"]] == [0.75]


EVIL = "<script>alert(1)</script>"


def hostile_store(store, files: Path) -> list[str]:
    """A sweep in which every string a user can write is markup: argv, override keys and
    values, case names, errors, tracebacks, failed nodes, node, metric, score and evaluator
    names, evaluator errors, file paths. Written through the Store's API."""
    sweep = store.create_sweep(["-m", f"x={EVIL}", "q='\"&amp;"])
    (files / "<dir>").mkdir(parents=True)
    (files / "<dir>" / "<b>.txt").write_text("a")
    commit = store.commit_dir(files)
    first = None
    for job in range(3):
        failed = job == 2
        run = store.start_run(sweep, job, [f'name=<b title="x">{job}</b>&', f"+q<i>='{job}'"],
                              "wf", "{}", "d", "/tmp/job", parent_run=first)
        case = f"{EVIL}{job}"
        store.start_thread(run, f"{run}/{case}", case, first and {
            "thread_id": f"{first}/{EVIL}0", "checkpoint_id": "c", "path": ["<load>"]})
        store.log_event("commit", {"thread_id": f"{run}/{case}"}, run_id=run)
        store.log_event("node", {"thread_id": f"{run}/{case}", "node": "<n&>"}, run_id=run)
        error = 'ValueError: <img src=x onerror=alert(2)> & "q"' if failed else None
        store.finish_thread(f"{run}/{case}", "failed" if failed else "completed", {}, None,
                            error=error, failed_node="<node>" if failed else None,
                            traceback="</pre><script>alert(3)</script>" if failed else None)
        store.finish_run(run, "failed" if failed else "completed", commit, {"<m>": job}, error)
        summary = {"scores": {"s'&": 0.5}, "kinds": {}, "errors": {"<judge>": 1},
                   "pass_rate": None, "success_rate": 0.0 if failed else 1.0, "cases": 1}
        store.add_evaluation(run, "run", "k", {"objective": "<m>", "mode": "max"},
                             {case: {"scores": {}, "errors": {"<judge>": f"TypeError: {EVIL}"}}},
                             summary)
        first = first or run
    run = store.start_run(sweep, 3, [f"name={EVIL}"], "wf", "{}", "d", "/tmp/job")
    store.finish_run(run, "failed", None, {}, f"WorkflowError: {EVIL}", f"Traceback: {EVIL}")
    return [sweep]


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory, browser):
    """The report of hostile_store, written by write_report and open in Chromium, with the
    URLs it requested and the dialogs it opened (an unescaped <img onerror> or <script>
    would add to them)."""
    tmp = tmp_path_factory.mktemp("hostile")
    with open_store(str(tmp / "wtb.db"), tmp / "blobs") as store:
        sweeps = hostile_store(store, tmp / "files")
        out = report_module.write_report(store, sweeps, tmp / "report.html")
    dialogs: list[str] = []
    page, requests = open_page(browser, out, dialogs)
    yield page, out.read_text(), requests, dialogs, out
    page.close()


def test_user_markup_runs_nothing_and_fetches_nothing(hostile_page):
    page, html, requests, dialogs, out = hostile_page
    assert html.count("<script") == 1 and "<img" not in html  # the page's own script only
    assert requests == [out.as_uri()] and dialogs == []
    assert page.locator("#comparison tbody tr").count() == 4  # nothing broke the table


HOSTILE = [  # (what the user wrote, where it shows on the page, the text shown there)
    ("sweep argv", "p.sub code", f"python -m wtb_conf -m x={EVIL} q='\"&amp;"),
    ("override value", "#comparison tbody td", '<b title="x">0</b>&'),
    ("override value, run heading", ".run h3", f"#3 {EVIL}"),
    ("override key", "#comparison th", "q<i>"),
    ("metric name and objective", "#comparison th", "<m>"),
    ("score name", "#comparison th", "s'&"),
    ("case name", ".run li b", f"{EVIL}0"),
    ("forked case's parent and inherited nodes", ".run li", f"{EVIL}0, inherited <load>"),
    ("case error", "#failures ~ p", 'failed in node <node>: ValueError: <img src=x onerror'),
    ("run error, failures heading", "#failures ~ h3", f"WorkflowError: {EVIL}"),
    ("case name, cases grid", "#cases-grid tbody th", f"{EVIL}0"),
    ("case name, cell details", ".cell-detail summary b", f"{EVIL}0"),
    ("case traceback", "#failures ~ pre", "</pre><script>alert(3)</script>"),
    ("run traceback", "#failures ~ pre", f"Traceback: {EVIL}"),
    ("evaluator error", "#failures + ul li", f"evaluator <judge> TypeError: {EVIL}"),
    ("node name", "#durations ~ .charts td", "<n&>"),
    ("node name, run line", ".run p.note", "nodes: <n&>"),
    ("file path", ".run details li code", "<dir>/<b>.txt"),
]


@pytest.mark.parametrize(("what", "where", "text"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_user_strings_show_as_text(hostile_page, what, where, text):
    page = hostile_page[0]
    page.locator("details summary").first.click()  # the file list is collapsed
    shown = page.locator(where).all_text_contents()
    assert any(text in s for s in shown), (what, shown)
    titles = page.locator("#comparison th").evaluate_all("hs => hs.map(h => h.title)")
    assert "q<i>" in titles and "<m>" in titles  # the full keys, in attributes


def test_the_page_is_rendered_from_template_files_in_the_package():
    from importlib.resources import files

    templates = files("wtb_conf.results") / "templates"
    for name in ("report.html.j2", "report.css", "report.js"):
        assert (templates / name).is_file(), name
    env = report_module._environment()
    assert env.autoescape is True
    assert "th[aria-sort=ascending]" in (templates / "report.css").read_text()
