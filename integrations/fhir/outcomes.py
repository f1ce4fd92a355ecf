"""OperationOutcome building and the exception every FHIR-facing error is raised as.

Service code raises `FhirError` with an HTTP status and one or more issues; the views turn it into
an OperationOutcome response, so every error a client sees names what was wrong and, where it
can, the element (`expression`) at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, code (from the IssueType value set) and diagnostics."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def as_json(self) -> dict:
        issue: dict = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


@dataclass
class FhirError(Exception):
    """An error answered to the client as an OperationOutcome with `status`."""

    status: int
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def single(
        cls, status: int, code: str, diagnostics: str, *, expression: tuple[str, ...] = ()
    ) -> FhirError:
        return cls(status, [Issue(code=code, diagnostics=diagnostics, expression=expression)])

    def __str__(self) -> str:
        return "; ".join(issue.diagnostics for issue in self.issues)


def operation_outcome(issues: list[Issue]) -> dict:
    """An OperationOutcome resource holding `issues`."""
    return {"resourceType": "OperationOutcome", "issue": [issue.as_json() for issue in issues]}


def information(diagnostics: str, code: str = "informational") -> Issue:
    return Issue(code=code, diagnostics=diagnostics, severity="information")


# Shorthands for the errors raised most often.
def not_found(resource_type: str, logical_id: str) -> FhirError:
    return FhirError.single(404, "not-found", f"{resource_type}/{logical_id} is not known")


def gone(resource_type: str, logical_id: str, version_id: int) -> FhirError:
    return FhirError.single(
        410, "deleted", f"{resource_type}/{logical_id} was deleted (version {version_id})"
    )


def invalid(diagnostics: str, *, expression: tuple[str, ...] = (), status: int = 400) -> FhirError:
    return FhirError.single(status, "invalid", diagnostics, expression=expression)
