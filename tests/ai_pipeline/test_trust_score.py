"""The trust score: the formula, each factor's range and signal, weights per specialty."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from ai_pipeline.config import parse_trust_weights
from ai_pipeline.models import TrustWeights
from ai_pipeline.trust import (
    Opinion,
    Weights,
    assess_finding,
    binary_entropy,
    consensus,
    get_weights,
    main_statement,
    trust_score,
)

EVEN = Weights(0.5, 0.25, 0.25, "default", "built-in")


def test_the_formula():
    score = trust_score(
        d_quality=0.9, m_confidence=0.8, h_consensus=0.6, u_factor=0.2, e_evidence=0.5, weights=EVEN
    )
    expected = 0.5 * (0.9 * 0.8) + 0.25 * 0.6 * (1 - 0.2) + 0.25 * 0.5
    assert score.score == pytest.approx(expected)
    assert score.percent == round(100 * expected, 1)
    assert sum(score.terms.values()) == pytest.approx(expected)
    report = score.as_dict()
    assert report["factors"] == {
        "D_quality": 0.9,
        "M_confidence": 0.8,
        "H_consensus": 0.6,
        "U_factor": 0.2,
        "E_evidence": 0.5,
    }
    assert report["weights"]["alpha"] == 0.5
    assert report["percent"] == score.percent


def test_the_extremes_are_zero_and_one_hundred_percent():
    best = trust_score(d_quality=1, m_confidence=1, h_consensus=1, u_factor=0, e_evidence=1, weights=EVEN)
    worst = trust_score(d_quality=0, m_confidence=0, h_consensus=0, u_factor=1, e_evidence=0, weights=EVEN)
    assert best.percent == 100.0
    assert worst.percent == 0.0


def test_factors_are_clipped_and_weights_normalised():
    clipped = trust_score(
        d_quality=1.7, m_confidence=-2, h_consensus=0.5, u_factor=3, e_evidence=1, weights=EVEN
    )
    assert clipped.d_quality == 1.0
    assert clipped.m_confidence == 0.0
    assert clipped.u_factor == 1.0
    doubled = Weights(1.0, 0.5, 0.5, "x", "test")
    normalised = trust_score(
        d_quality=1, m_confidence=1, h_consensus=1, u_factor=0, e_evidence=0, weights=doubled
    )
    assert normalised.weights.alpha == pytest.approx(0.5)
    assert normalised.percent == 75.0
    with pytest.raises(ValueError, match="finite"):
        trust_score(
            d_quality=float("nan"), m_confidence=1, h_consensus=1, u_factor=0, e_evidence=1, weights=EVEN
        )


def test_a_positive_finding_on_a_run_of_slices():
    p = np.array([0.02, 0.05, 0.7, 0.9, 0.95, 0.8, 0.1, 0.03])
    a = assess_finding(p, label="lesion", threshold=0.5, min_consecutive=2)
    assert a.positive
    assert a.longest_run == [2, 3, 4, 5]
    assert a.best_index == 4
    assert a.probability == pytest.approx(0.95)
    assert a.confidence == pytest.approx(np.mean((p[2:6] - 0.5) / 0.5))
    assert a.evidence == pytest.approx(1.0)  # 4 adjacent images, all of the positive ones
    assert a.uncertainty == pytest.approx(float(np.mean(binary_entropy(p[2:6]))))  # no TTA: entropy only
    assert a.disagreement == 0.0


def test_scattered_positives_are_weaker_evidence():
    p = np.array([0.9, 0.1, 0.9, 0.9, 0.1, 0.9, 0.1, 0.1])
    a = assess_finding(p, label="lesion", threshold=0.5, min_consecutive=2)
    assert a.positive
    assert a.evidence == pytest.approx((2 / 4) * (2 / 4))  # run of 2 of 4 positives; run / (2 x 2)


def test_an_isolated_positive_slice_is_not_reported_but_lowers_confidence():
    p = np.array([0.01, 0.02, 0.97, 0.02, 0.01, 0.01])
    a = assess_finding(p, label="lesion", threshold=0.5, min_consecutive=2)
    assert not a.positive
    assert a.decisive == [1, 2]  # the two closest to a positive call
    # margins 0.96 and -0.94 average to 0.01: the isolated hit nearly cancels the "no"
    assert a.confidence == pytest.approx(float(np.clip(np.mean((0.5 - p[[1, 2]]) / 0.5), 0, 1)))
    clean = assess_finding(np.full(6, 0.01), label="lesion", threshold=0.5, min_consecutive=2)
    assert clean.confidence > a.confidence
    assert clean.evidence == pytest.approx(1.0)
    assert a.evidence == pytest.approx(5 / 6)  # one image is not clearly negative


def test_missing_slices_lower_the_evidence_of_absence():
    p = np.full(9, 0.01)
    assert assess_finding(p, label="x", threshold=0.5, missing_images=1).evidence == pytest.approx(9 / 10)


def test_disagreement_across_augmentations_raises_the_uncertainty():
    agree = np.array([[0.9, 0.9, 0.1], [0.9, 0.9, 0.1], [0.9, 0.9, 0.1]])
    disagree = np.array([[0.99, 0.99, 0.1], [0.6, 0.6, 0.1], [0.99, 0.99, 0.1]])
    calm = assess_finding(agree, label="x", threshold=0.5, min_consecutive=2)
    nervous = assess_finding(disagree, label="x", threshold=0.5, min_consecutive=2)
    assert calm.disagreement == 0.0
    assert nervous.disagreement == pytest.approx(2 * np.std([0.99, 0.6, 0.99]), rel=1e-6)
    assert nervous.uncertainty > calm.uncertainty
    assert 0.0 <= nervous.uncertainty <= 1.0
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)


def test_a_single_image_study_needs_one_image():
    a = assess_finding(np.array([0.8]), label="x", threshold=0.5, min_consecutive=3)
    assert a.positive
    assert a.run_needed == 1
    assert a.evidence == 1.0


def test_the_main_statement_is_the_surest_positive_else_the_closest_negative():
    lesion = assess_finding(np.array([0.1, 0.8, 0.9]), label="lesion", threshold=0.5)
    bleed = assess_finding(np.array([0.1, 0.6, 0.7]), label="bleed", threshold=0.5)
    assert main_statement([bleed, lesion]) is lesion
    quiet = assess_finding(np.array([0.1, 0.2]), label="a", threshold=0.5)
    closer = assess_finding(np.array([0.1, 0.2]), label="b", threshold=0.3)
    assert main_statement([quiet, closer]) is closer


def test_consensus_is_the_weighted_share_that_agrees():
    opinions = [
        Opinion("prior_report", "Observation/1", True, 1.0),
        Opinion("prior_report", "Observation/2", False, 0.5),
        Opinion("other_model", "m 1", True, 1.0),
    ]
    result = consensus(True, opinions)
    assert result.value == pytest.approx(2 / 2.5)
    assert consensus(False, opinions).value == pytest.approx(0.5 / 2.5)
    assert [o["agrees"] for o in result.opinions] == [True, False, True]


def test_no_one_to_agree_with_is_neutral(settings):
    settings.BTT_TRUST_NEUTRAL_CONSENSUS = 0.5
    result = consensus(True, [])
    assert result.value == 0.5
    assert result.neutral
    settings.BTT_TRUST_NEUTRAL_CONSENSUS = 0.3
    assert consensus(False, []).value == 0.3


@pytest.mark.django_db
def test_weights_per_specialty_database_then_settings_then_default(settings):
    settings.BTT_TRUST_WEIGHTS = parse_trust_weights(
        json.dumps({"radiology": {"alpha": 0.6, "beta": 0.2, "gamma": 0.2}})
    )
    assert get_weights("radiology") == Weights(0.6, 0.2, 0.2, "radiology", "settings")
    assert get_weights("pathology") == Weights(0.5, 0.25, 0.25, "default", "settings")
    TrustWeights.objects.create(specialty="radiology", alpha=0.4, beta=0.4, gamma=0.2)
    assert get_weights("Radiology") == Weights(0.4, 0.4, 0.2, "radiology", "database")
    TrustWeights.objects.create(specialty="default", alpha=0.34, beta=0.33, gamma=0.33)
    assert get_weights("pathology").source == "database"
    assert get_weights(None).specialty == "default"


def test_the_weights_setting_is_checked():
    assert parse_trust_weights(None) == {"default": {"alpha": 0.5, "beta": 0.25, "gamma": 0.25}}
    with pytest.raises(ImproperlyConfigured, match="must be JSON"):
        parse_trust_weights("{radiology")
    with pytest.raises(ImproperlyConfigured, match="exactly alpha, beta and gamma"):
        parse_trust_weights('{"radiology": {"alpha": 1}}')
    with pytest.raises(ImproperlyConfigured, match=r"alpha \+ beta \+ gamma must be 1, got 1\.2"):
        parse_trust_weights('{"radiology": {"alpha": 0.6, "beta": 0.3, "gamma": 0.3}}')
    with pytest.raises(ImproperlyConfigured, match="between 0 and 1"):
        parse_trust_weights('{"radiology": {"alpha": 1.5, "beta": -0.25, "gamma": -0.25}}')


@pytest.mark.django_db
def test_weights_rows_are_validated():
    with pytest.raises(ValidationError, match="must be 1"):
        TrustWeights(specialty="x", alpha=0.5, beta=0.5, gamma=0.5).full_clean()
    row = TrustWeights(specialty=" Cardiology ", alpha=0.5, beta=0.3, gamma=0.2)
    row.full_clean()
    assert row.specialty == "cardiology"
