"""`name` and `address` index rows no longer repeat the values of their subsets (`family` and
`given`; `address-city`, `-state`, `-postalcode` and `-country`: searchparams.SUBSET_PARAMS),
which a search on them now reads too. Remove the repeats earlier versions wrote. Going back would
need those resources re-indexed."""

from django.db import migrations

# searchparams.SUBSET_PARAMS as this migration found it.
_NAME = ("name", ("family", "given"))
_ADDRESS = ("address", ("address-city", "address-state", "address-postalcode", "address-country"))
_SUBSETS = {
    "Patient": (_NAME, _ADDRESS),
    "Practitioner": (_NAME, _ADDRESS),
    "Person": (_ADDRESS,),
    "RelatedPerson": (_ADDRESS,),
    "Organization": (_ADDRESS,),
    "Location": (_ADDRESS,),
    "InsurancePlan": (_ADDRESS,),
}


def _statements() -> list[str]:
    statements = []
    for resource_type, subsets in _SUBSETS.items():
        for code, members in subsets:
            listed = ", ".join(f"'{member}'" for member in members)
            # Plain SQL that PostgreSQL and SQLite (the embedded default) both run.
            statements.append(
                "DELETE FROM fhir_idx_string WHERE id IN (SELECT r.id FROM fhir_idx_string r "
                "JOIN fhir_idx_string s ON s.record_id = r.record_id AND s.resource_type = r.resource_type "
                f"AND s.param IN ({listed}) AND s.value = r.value AND s.exact = r.exact "
                f"WHERE r.resource_type = '{resource_type}' AND r.param = '{code}')"
            )
    return statements


class Migration(migrations.Migration):
    dependencies = [
        ("fhir", "0009_drop_phonetic_rows"),
    ]

    operations = [
        # Without statistics (a table no ANALYZE has seen yet) the planner nested-loops the
        # self-join: minutes for 100,000 rows instead of seconds.
        migrations.RunSQL("ANALYZE fhir_idx_string", reverse_sql=migrations.RunSQL.noop),
        *(migrations.RunSQL(sql, reverse_sql=migrations.RunSQL.noop) for sql in _statements()),
    ]
