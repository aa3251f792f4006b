"""``make bench``'s driver: every step is a runnable module, and the headline columns it quotes exist in the
reports those modules write (a renamed column would otherwise silently drop out of RESULTS.md)."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.run_all import STEP_NAMES, md_sections, steps, table_headline

SECTION = """# report

### Decisions

Some note.

| model | best measured settings | defaults | verdict |
|---|---|---|---|
| `lam_a2e` | `x=1` | kept | keep the defaults |
| `lam_a2e_stream` | `y=0` | change | **change the defaults** |

### Next
"""


@pytest.mark.parametrize("quick", [True, False])
def test_every_step_is_a_module_with_main_and_a_distinct_results_file(quick):
    all_steps = steps(quick)
    assert tuple(step.name for step in all_steps) == STEP_NAMES
    assert len({step.results for step in all_steps}) == len(all_steps)
    for step in all_steps:
        module = importlib.import_module(step.module)
        assert callable(module.main), step.module
        assert step.command(quick)[-2:] == ["--out", str(step.results.relative_to(step.results.parents[2]))]


def test_headline_quotes_only_the_chosen_columns():
    section = md_sections(SECTION, "Decisions")
    assert section.startswith("#### Decisions") and "### Next" not in section
    assert table_headline(section, ("defaults",)) == ["model `lam_a2e`: defaults kept", "model `lam_a2e_stream`: defaults change"]
    assert "verdict keep the defaults" in table_headline(section)[0]


def test_headline_columns_exist_in_the_reports_that_carry_them():
    from benchmarks.floor import FLOOR_HEADER

    by_name = {step.name: step for step in steps(False)}
    assert set(by_name["floor"].headline_columns) <= set(FLOOR_HEADER)
    from benchmarks.tuning import DECISIONS_HEADER

    assert set(by_name["tuning"].headline_columns) <= set(DECISIONS_HEADER)


def test_results_md_quotes_every_report_from_a_perf_analyzer_run(tmp_path, monkeypatch):
    """perf_analyzer's report carries the per-model tables; run_all copies them and the other steps' headline sections."""
    import datetime as dt

    from benchmarks import perf_analyzer as pa
    from benchmarks import run_all

    row = {"Inferences/Second": "75.8", "p50 latency": "13100", "p95 latency": "13900", "p99 latency": "15600",
           "Server Queue": "10200", "Server Compute Input": "100", "Server Compute Infer": "2400", "Server Compute Output": "100"}
    responses = {"first p50": 28.1, "first p95": 30.0, "first p99": 34.4, "responses_per_request": 17.0}
    results = [pa.TargetResult(pa.Target("lam_a2e", "stateless", (1,)), [pa.Level(1, True, "pa -m lam_a2e", 1.0, row=row)]),
               pa.TargetResult(pa.Target("emotion_llama_llm", "decoupled", (1, 2)),
                               [pa.Level(1, True, "pa -m emotion_llama_llm", 1.0, row=row, responses=responses),
                                pa.Level(2, False, "", 0.0, error="timed out after 90 s")])]
    all_steps = run_all.steps(False)
    for step in all_steps:
        step.results, step.rc = tmp_path / step.results.name, 0
    header = ["# perf_analyzer", "", "- perf_analyzer: tritonclient 2.51.0 wheel", "- versions: python 3; tritonserver 2.51.0 (wheel)"]
    pa.write_outputs(results, pa.InputFiles(notes={"lam_a2e": "speech windows"}), header, all_steps[0].results, tmp_path / "pa.json")
    all_steps[1].results.write_text(SECTION.replace("Decisions", "Measured time over floor").replace("defaults", "p50 / floor"))
    all_steps[2].results.write_text(SECTION)
    all_steps[3].rc, all_steps[3].error = 1, "exit status 1: boom"

    text = run_all.write_results(tmp_path / "RESULTS.md", False, all_steps, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), 60, "cmd")
    assert "| grpc | 1 | 75.8 | 13.1 | 13.9 | 15.6 | 10.2 | 2.6 |  |" in text  # lam_a2e, as RESULTS.md has always shown it
    assert "first response p50/p95/p99 28.1 / 30.0 / 34.4 ms, 17 responses/request" in text
    assert "| grpc | 2 | — | — | — | — | — | — | **not measured**: timed out after 90 s |" in text
    assert "- perf_analyzer — p50 / p95 / p99 latency and throughput per Triton model (Summary of" in text
    assert "value 1 of 2" in text and "tritonserver 2.51.0 (wheel)" in text
    assert "model `lam_a2e`: defaults kept" in text  # the tuning decision, quoted in the headlines
    assert "Not available: exit status 1: boom" in text and "**failed**: exit status 1: boom" in text
