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
