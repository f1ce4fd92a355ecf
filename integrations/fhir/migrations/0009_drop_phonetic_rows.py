"""`phonetic` on Patient, Person, Practitioner and RelatedPerson has no index rows of its own any
more: it is a union parameter of `name` (searchparams.UNION_PARAMS). Remove the rows earlier
versions wrote. Going back would need those resources re-indexed."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("fhir", "0008_drop_union_param_rows"),
    ]

    operations = [
        migrations.RunSQL(
            "DELETE FROM fhir_idx_string WHERE param = 'phonetic' "
            "AND resource_type IN ('Patient', 'Person', 'Practitioner', 'RelatedPerson')",
            reverse_sql=migrations.RunSQL.noop,
        )
    ]
