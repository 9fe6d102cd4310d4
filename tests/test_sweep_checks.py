"""Every job of a sweep is checked when the sweep starts (wtb_conf.driver.preflight):
a config error in
any job is one refusal before anything is written, the real `python -m wtb_conf` in a new
project; and what works before a workflow is chosen (--help, --info, --cfg job)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_project, run_bench


@pytest.mark.parametrize("where", ["empty", "project"])
@pytest.mark.parametrize("args", [("--help",), ("--info",), ("--cfg", "job")])
def test_help_info_and_cfg_work_before_a_workflow_is_chosen(tmp_path, where, args):
    """They exited 1 with Hydra's 49-line "You must specify 'workflow'" traceback."""
    project = copy_project(tmp_path) if where == "project" else tmp_path
    proc = run_bench(project, *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if args == ("--help",) and where == "project":
        assert "file_processing" in proc.stdout  # the workflows to choose from
    if args == ("--cfg", "job"):
        assert "share_prefixes: true" in proc.stdout
    assert not (project / "data").exists() and not (project / "multirun").exists()


@pytest.mark.parametrize("where", ["empty", "project"])
def test_running_without_a_workflow_says_which_there_are(tmp_path, where):
    project = copy_project(tmp_path) if where == "project" else tmp_path
    for args in ((), ("-m",)):
        proc = run_bench(project, *args, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith("You must specify 'workflow', e.g, workflow=<OPTION>; ")
        assert ("available options: file_processing, support_agent, table_report"
                if where == "project" else "add conf/workflow/NAME.yaml") in line
        assert not (project / "data").exists() and not (project / "multirun").exists()


DEMO = ("-m", "+experiment=demo")  # 4 jobs: 2 variants x 2 thresholds


@pytest.mark.parametrize(("args", "message"), [
    ((*DEMO, "workflow.nodes.clean._target_=experiments.file_processing.nodes.clen"),
     "workflow.nodes.clean._target_: cannot import 'experiments.file_processing.nodes.clen': "
     "'experiments.file_processing.nodes' has no attribute 'clen'"),
    ((*DEMO, "compare.objective=nope"),
     "compare.objective: 'nope' is not a metric or a score of this workflow; valid: rows_in, "
     "rows_out, invalid_ratio, total_amount, kept, total_ok, report_written, pass_rate, "
     "success_rate (or NAME.KEY of an evaluator that returns a dict)"),
    ((*DEMO, "+compre.objective=kept.f1"),
     "compre: unknown top-level key; the config has the groups workflow, env, storage, fork, "
     "compare (variant=... and +experiment=... set keys in them) and the switches rerun, "
     "share_prefixes, trials"),
    ((*DEMO, "workflow.routes.validate.router.max_invalid=abc"),
     "workflow.routes.validate.router.max_invalid: 'abc' is not a float "
     "(experiments.file_processing.nodes.quality_gate takes max_invalid: float)"),
    ((*DEMO, "workflow.routes.validate.router.max_invalid=0.1,abc"),
     "2 of 4 jobs [job 1 (variant=drop_invalid workflow.routes.validate.router.max_invalid=abc)"
     "; job 3 (variant=fill_defaults workflow.routes.validate.router.max_invalid=abc)]: "
     "workflow.routes.validate.router.max_invalid: 'abc' is not a float "
     "(experiments.file_processing.nodes.quality_gate takes max_invalid: float)"),
    ((*DEMO, "+workflow.metrics.typo=n_tokenz"),
     "workflow.metrics.typo: 'n_tokenz' names no state field; the state has input_csv, rows, "
     "settings, clean, rejected, rows_in, invalid_ratio, quarantined, total_amount, rows_out, "
     "log"),
    ((*DEMO, "workflow.evaluators.total_ok.key=nosuchkey"),
     "workflow.evaluators.total_ok.key: 'nosuchkey' names no state field; the state has "
     "input_csv, rows, settings, clean, rejected, rows_in, invalid_ratio, quarantined, "
     "total_amount, rows_out, log"),
    ((*DEMO, "workflow.cases.returns.input_csv=experiments/file_processing/data"),
     "workflow.cases.returns.input_csv: 'experiments/file_processing/data' is a directory; a "
     "text_file field names a file"),
    ((*DEMO, "variant=drop_invalid,nope"),
     "2 of 4 jobs [job 2 (variant=nope workflow.routes.validate.router.max_invalid=0.1); job 3 "
     "(variant=nope workflow.routes.validate.router.max_invalid=0.3)]: In 'config': Could not "
     "find 'variant/nope'; Available options in 'variant': agent_cite, agent_friendly, "
     "agent_terse, drop_invalid, fill_defaults, strict_amounts"),
    ((*DEMO, "trials=0"), "trials: 0 is not an integer >= 1; give one, e.g. 1 (the default)"),
    ((*DEMO, "trials=-1"), "trials: -1 is not an integer >= 1; give one, e.g. 1 (the default)"),
    ((*DEMO, "trials=ten"),
     "trials: 'ten' is not an integer >= 1; give one, e.g. 1 (the default)"),
    ((*DEMO, "+workflow.trials=0"),
     "workflow.trials: 0 is not an integer >= 1; give one, e.g. 1 (the default)"),
    ((*DEMO, 'compare.gates=["acc < baseline"]'),
     "compare.gates[0] 'acc < baseline': 'acc' is not a metric or a score of this "
     "workflow; valid: rows_in, rows_out, invalid_ratio, total_amount, kept, total_ok, "
     "report_written, pass_rate, success_rate (or NAME.KEY of an evaluator that returns a "
     "dict)"),
    # a job in its own interpreter: its targets are not imported here, the rest is checked
    (("-m", "workflow=file_processing", "env=tabulate_09", "+workflow.metrics.typo=n_tokenz"),
     "workflow.metrics.typo: 'n_tokenz' names no state field; the state has input_csv, rows, "
     "settings, clean, rejected, rows_in, invalid_ratio, quarantined, total_amount, rows_out, "
     "log"),
    # no -m: the one run's config
    (("workflow=file_processing", "+compre.objective=kept.f1"),
     "compre: unknown top-level key; the config has the groups workflow, env, storage, fork, "
     "compare (variant=... and +experiment=... set keys in them) and the switches rerun, "
     "share_prefixes, trials"),
])
def test_a_bad_job_refuses_the_sweep_before_anything_is_written(tmp_path, args, message):
    """Each recorded 4 failed runs and a failed sweep (or ran, or recorded None) before."""
    project = copy_project(tmp_path)
    proc = run_bench(project, *args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [message]
    for made in ("data", "multirun", "outputs"):
        assert not (project / made).exists(), made


def test_a_bad_value_in_many_jobs_is_counted_not_listed(tmp_path):
    project = copy_project(tmp_path)
    proc = run_bench(project, "-m", "workflow=file_processing", "compare.mode=max,best",
                     "storage.inline_max=range(1000,1050)", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("50 of 100 jobs [job 50 (compare.mode=best storage.inline_max=1000)"
                           "; job 51 (compare.mode=best storage.inline_max=1001); job 52 ")
    assert "and 47 more]: compare.mode: 'best' is not one of max, min" in line
    assert not (project / "data").exists() and not (project / "multirun").exists()


@pytest.mark.parametrize("overrides", [
    ["variant=fill_defaults", "workflow.routes.validate.router.max_invalid=0.3"],
    ["+workflow.metrics.n=rows_in", "~workflow.expected", "storage.inline_max=7"],
    ["workflow.nodes.clean={_target_: experiments.file_processing.nodes.fill_defaults}"],
    ["variant=drop_invalid", "hydra.job.name=other", "rerun=true"],
])
def test_a_jobs_config_is_the_one_hydra_composes(tmp_path, monkeypatch, overrides):
    """The check composes once per choice of groups and applies the other overrides to a
    copy, as Hydra applies them: the result is what the launcher's own composition gives."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from wtb_conf.driver import preflight

    monkeypatch.chdir(copy_project(tmp_path))
    import wtb_conf
    import wtb_conf.__main__  # noqa: F401  (stores hydra/launcher=wtb)

    conf = str(Path(wtb_conf.__file__).parent / "conf")
    with initialize_config_dir(conf, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        primary = loader.load_configuration("config", ["workflow=file_processing"],
                                            RunMode.MULTIRUN)
        composer = preflight.Composer(primary)
        overrides = ["workflow=file_processing", *overrides]  # a job's has them all
        composer.task(["workflow=file_processing", "variant=drop_invalid"], 0)  # another base
        whole = preflight._resolved(preflight._compose(primary, overrides, 1))
        assert composer.task(overrides, 1) == whole
