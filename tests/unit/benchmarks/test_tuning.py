"""The tuning experiments' verdict rule and the BuildSettings knobs they move (no server)."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.perf_analyzer import Level, Target, TargetResult
from benchmarks.tuning import DEFAULTS, NOISE_MARGIN, Variant, VariantResult, experiments, verdict
from export.build_repository import BuildSettings
from export.lam_a2e import stream_config


def measured(variant: Variant, throughput: float | None, p99_ms: float = 10.0) -> VariantResult:
    outcome = VariantResult(variant, variant.settings(BuildSettings()))
    row = {"Inferences/Second": str(throughput), "p99 latency": str(p99_ms * 1000)}
    level = (Level(4, True, "pa ...", 1.0, row=row) if throughput is not None
             else Level(4, False, "pa ...", 1.0, error="rc 1: failed"))
    outcome.result = TargetResult(Target("lam_a2e", "stateless", (4,)), [level])
    return outcome


NO_DELAY = Variant("no batching delay", (("network_queue_delay_us", 0),))


def test_default_kept_within_the_noise_margin():
    decision = verdict([measured(DEFAULTS, 100.0), measured(NO_DELAY, 100.0 * (1 + NOISE_MARGIN / 2))])
    assert decision.keep_default
    assert decision.best.variant is NO_DELAY
    assert "keep the defaults" in decision.text


def test_a_clearly_better_variant_names_the_default_to_change():
    decision = verdict([measured(DEFAULTS, 100.0), measured(NO_DELAY, 150.0)])
    assert not decision.keep_default
    assert "BuildSettings.network_queue_delay_us = 0" in decision.text
    assert "1.50x" in decision.text


def test_throughput_bought_with_a_long_tail_does_not_win():
    parked = Variant("4 candidate sequences", (("stream_candidate_sequences", 4),))
    decision = verdict([measured(DEFAULTS, 100.0, p99_ms=40.0), measured(parked, 200.0, p99_ms=130.0)])
    assert decision.keep_default and decision.best.variant is DEFAULTS


def test_a_default_with_a_long_tail_is_replaced_even_at_equal_throughput():
    decision = verdict([measured(DEFAULTS, 100.0, p99_ms=300.0), measured(NO_DELAY, 100.0, p99_ms=40.0)])
    assert not decision.keep_default and decision.best.variant is NO_DELAY


def test_failed_variants_never_win_and_an_unmeasured_default_gives_no_verdict():
    decision = verdict([measured(DEFAULTS, None), measured(NO_DELAY, 80.0)])
    assert decision.keep_default and decision.best.variant is NO_DELAY
    assert "not measured" in decision.text
    assert verdict([measured(DEFAULTS, None)]).best is None


@pytest.mark.parametrize("quick", [True, False])
def test_every_variant_moves_only_its_experiments_knobs_of_buildsettings(quick):
    fields = {f.name for f in dataclasses.fields(BuildSettings)}
    for experiment in experiments(quick):
        assert experiment.variants[0] is DEFAULTS
        assert set(experiment.knobs) <= fields
        for variant in experiment.variants[1:]:
            assert {name for name, _ in variant.overrides} <= set(experiment.knobs), (experiment.slug, variant.label)
            settings = variant.settings(BuildSettings())  # replace() refuses unknown fields
            # a variant that equals the defaults measures nothing new (left behind when a default moved)
            assert any(getattr(settings, knob) != getattr(BuildSettings(), knob) for knob in experiment.knobs), variant.label


def test_candidate_sequences_knob_reaches_the_sequence_batcher_config():
    text = stream_config(BuildSettings(stream_candidate_sequences=4, stream_max_batch=4, stream_queue_delay_us=0))
    assert "max_candidate_sequences: 4" in text
    assert "preferred_batch_size: [ 4 ]" in text
    assert "max_queue_delay_microseconds: 0" in text
