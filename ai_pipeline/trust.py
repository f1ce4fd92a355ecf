"""The trust score of an AI report, from real signals (docs/trust-score.md has the full story).

    T = alpha * (D_quality * M_confidence) + beta * H_consensus * (1 - U_factor) + gamma * E_evidence

Every factor is in [0, 1] and alpha + beta + gamma = 1, so T is in [0, 1]; it is reported as a
percentage with each factor and the weights. The factors are about the report's main statement:
its positive finding with the highest probability, or, when nothing was found, the finding that
came closest to being reported (the least certain "no").

D_quality     image quality of the series the statement rests on: the product of the quality
              checks' scores (preprocessing.assess_quality: missing/uneven slices, noise, bit
              depth, lossy compression, pixel spacing, number of slices).
M_confidence  the model's margin at the decisive images, rescaled by the threshold t:
              positive (p - t) / (1 - t), negative (t - p) / t, averaged, clipped to [0, 1].
U_factor      predictive uncertainty at the decisive images: the larger of the mean binary
              entropy of the mean prediction (bits) and the mean disagreement across test-time
              augmentations (2 x standard deviation of p, at most 1).
H_consensus   agreement with other opinions on the same finding: prior reports of the same
              patient (clinician-final ones weigh 1, preliminary ones 0.5; a different body site
              does not count) and other models (or versions) on the same study (weight 1):
              the weighted share that agrees. Nothing to compare with: BTT_TRUST_NEUTRAL_CONSENSUS.
E_evidence    how much of the study supports the statement. Positive: (images in the longest
              run of adjacent positive images / all positive images) x min(1, run / (2 x the
              manifest's min_consecutive_slices, at most the series length)). Negative: the
              share of the series that was really imaged (missing slices lower it) x the share of
              images clearly negative (p < t / 2).

The weights come per specialty from a `TrustWeights` row, else `BTT_TRUST_WEIGHTS`, else the
"default" row or setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

DECISIVE_NEGATIVE = "top images"


def _clip(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """H(p) in bits, 0 at p in {0, 1}, 1 at p = 0.5."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


@dataclass
class FindingAssessment:
    """What the model says about one finding label on one series, from its TTA predictions."""

    label: str
    threshold: float
    positive: bool
    probability: float  # the highest mean probability over the images
    best_index: int  # image with that probability (in spatial order)
    supporting: list[int]  # images with mean probability >= threshold
    longest_run: list[int]  # the longest run of adjacent supporting images
    run_needed: int
    decisive: list[int]
    confidence: float  # M_confidence
    entropy: float
    disagreement: float
    uncertainty: float  # U_factor
    evidence: float  # E_evidence
    images: int
    missing_images: int = 0

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "positive": self.positive,
            "probability": round(self.probability, 4),
            "threshold": self.threshold,
            "best_index": self.best_index,
            "supporting_images": len(self.supporting),
            "longest_run": len(self.longest_run),
            "run_needed": self.run_needed,
            "images": self.images,
            "missing_images": self.missing_images,
            "confidence": round(self.confidence, 4),
            "entropy": round(self.entropy, 4),
            "disagreement": round(self.disagreement, 4),
            "uncertainty": round(self.uncertainty, 4),
            "evidence": round(self.evidence, 4),
        }


def _runs(indexes: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for index in indexes:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def assess_finding(
    probabilities: np.ndarray,
    *,
    label: str,
    threshold: float,
    min_consecutive: int = 1,
    missing_images: int = 0,
) -> FindingAssessment:
    """Assess one label from `probabilities[a, i]` (augmentation a, image i in spatial order)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1:
        probabilities = probabilities[np.newaxis]
    augmentations, images = probabilities.shape
    if images == 0:
        raise ValueError("no images to assess")
    mean = probabilities.mean(axis=0)
    spread = probabilities.std(axis=0) if augmentations > 1 else np.zeros(images)
    supporting = [int(i) for i in np.flatnonzero(mean >= threshold)]
    runs = _runs(supporting)
    longest = max(runs, key=len) if runs else []
    needed = max(1, min(min_consecutive, images))
    positive = len(longest) >= needed
    if positive:
        decisive = longest
        margins = (mean[decisive] - threshold) / (1 - threshold)
    else:
        decisive = sorted(int(i) for i in np.argsort(-mean, kind="stable")[:needed])
        margins = (threshold - mean[decisive]) / threshold
    confidence = _clip(float(np.mean(margins)))
    entropy = float(np.mean(binary_entropy(mean[decisive])))
    disagreement = _clip(float(np.mean(2 * spread[decisive])))
    uncertainty = _clip(max(entropy, disagreement))
    if positive:
        consistency = len(longest) / len(supporting)
        extent = min(1.0, len(longest) / min(images, 2 * needed))
        evidence = consistency * extent
    else:
        coverage = images / (images + missing_images)
        clearly_negative = float(np.mean(mean < threshold / 2))
        evidence = coverage * clearly_negative
    best = int(np.argmax(mean))
    return FindingAssessment(
        label=label,
        threshold=threshold,
        positive=positive,
        probability=float(mean[best]),
        best_index=best,
        supporting=supporting,
        longest_run=longest,
        run_needed=needed,
        decisive=decisive,
        confidence=confidence,
        entropy=entropy,
        disagreement=disagreement,
        uncertainty=uncertainty,
        evidence=_clip(evidence),
        images=images,
        missing_images=missing_images,
    )


def main_statement(assessments: list[FindingAssessment]) -> FindingAssessment:
    """The assessment the trust score is about (see the module docstring)."""
    if not assessments:
        raise ValueError("no findings assessed")
    positives = [a for a in assessments if a.positive]
    if positives:
        return max(positives, key=lambda a: a.probability)
    return max(assessments, key=lambda a: a.probability / a.threshold)


# --- consensus --------------------------------------------------------------------------------


@dataclass
class Opinion:
    """Another opinion on the same finding: a prior report or another model."""

    source: str  # "prior_report" or "other_model"
    reference: str  # what it is (Observation/123, or "model 1.0")
    positive: bool
    weight: float

    def as_dict(self, agrees: bool) -> dict:
        return {
            "source": self.source,
            "reference": self.reference,
            "positive": self.positive,
            "weight": self.weight,
            "agrees": agrees,
        }


@dataclass
class Consensus:
    value: float
    opinions: list[dict] = field(default_factory=list)
    neutral: bool = False


def consensus(positive: bool, opinions: list[Opinion], neutral: float | None = None) -> Consensus:
    """The weighted share of `opinions` agreeing with `positive`; `neutral` when there are none."""
    if neutral is None:
        neutral = float(settings.BTT_TRUST_NEUTRAL_CONSENSUS)
    weighted = [(opinion, opinion.positive == positive) for opinion in opinions if opinion.weight > 0]
    if not weighted:
        return Consensus(_clip(neutral), [], neutral=True)
    total = sum(opinion.weight for opinion, _ in weighted)
    agreeing = sum(opinion.weight for opinion, agrees in weighted if agrees)
    return Consensus(_clip(agreeing / total), [opinion.as_dict(agrees) for opinion, agrees in weighted])


# --- weights and the score --------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    alpha: float
    beta: float
    gamma: float
    specialty: str
    source: str  # "database", "settings" or "built-in"


def get_weights(specialty: str | None) -> Weights:
    """alpha, beta, gamma for `specialty`: its TrustWeights row, its BTT_TRUST_WEIGHTS entry, then
    the "default" row, then the "default" setting."""
    from ai_pipeline.models import TrustWeights

    name = (specialty or "default").strip().lower() or "default"
    configured = settings.BTT_TRUST_WEIGHTS
    for candidate in dict.fromkeys([name, "default"]):
        row = TrustWeights.objects.filter(specialty=candidate).first()
        if row is not None:
            return Weights(row.alpha, row.beta, row.gamma, candidate, "database")
        if candidate in configured:
            values = configured[candidate]
            return Weights(values["alpha"], values["beta"], values["gamma"], candidate, "settings")
    return Weights(0.5, 0.25, 0.25, "default", "built-in")


@dataclass
class TrustScore:
    score: float  # 0..1
    d_quality: float
    m_confidence: float
    h_consensus: float
    u_factor: float
    e_evidence: float
    weights: Weights
    details: dict = field(default_factory=dict)

    @property
    def percent(self) -> float:
        return round(100.0 * self.score, 1)

    @property
    def terms(self) -> dict[str, float]:
        """The three weighted terms, which add up to the score."""
        w = self.weights
        return {
            "quality_confidence": w.alpha * self.d_quality * self.m_confidence,
            "consensus_certainty": w.beta * self.h_consensus * (1 - self.u_factor),
            "evidence": w.gamma * self.e_evidence,
        }

    def as_dict(self) -> dict:
        return {
            "percent": self.percent,
            "score": round(self.score, 4),
            "formula": "T = alpha*(D_quality*M_confidence) + beta*H_consensus*(1-U_factor) + gamma*E_evidence",
            "factors": {
                "D_quality": round(self.d_quality, 4),
                "M_confidence": round(self.m_confidence, 4),
                "H_consensus": round(self.h_consensus, 4),
                "U_factor": round(self.u_factor, 4),
                "E_evidence": round(self.e_evidence, 4),
            },
            "terms": {key: round(value, 4) for key, value in self.terms.items()},
            "weights": {
                "alpha": self.weights.alpha,
                "beta": self.weights.beta,
                "gamma": self.weights.gamma,
                "specialty": self.weights.specialty,
                "source": self.weights.source,
            },
            "details": self.details,
        }


def trust_score(
    *,
    d_quality: float,
    m_confidence: float,
    h_consensus: float,
    u_factor: float,
    e_evidence: float,
    weights: Weights,
    details: dict | None = None,
) -> TrustScore:
    """T from the five factors (each clipped to [0, 1]) and the weights (normalised to sum 1)."""
    factors = [d_quality, m_confidence, h_consensus, u_factor, e_evidence]
    if any(not math.isfinite(value) for value in factors):
        raise ValueError(f"trust factors must be finite numbers, got {factors}")
    d, m, h, u, e = (_clip(value) for value in factors)
    total = weights.alpha + weights.beta + weights.gamma
    if total <= 0:
        raise ValueError("trust weights must not all be zero")
    if abs(total - 1.0) > 1e-9:
        weights = Weights(
            weights.alpha / total,
            weights.beta / total,
            weights.gamma / total,
            weights.specialty,
            weights.source,
        )
    score = weights.alpha * (d * m) + weights.beta * h * (1 - u) + weights.gamma * e
    return TrustScore(_clip(score), d, m, h, u, e, weights, details or {})
