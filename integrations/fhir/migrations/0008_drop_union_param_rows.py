"""Observation's combo-* parameters have no index rows of their own any more (searchparams.UNION_PARAMS):
remove the rows earlier versions wrote. Going back would need the Observations re-indexed."""

from django.db import migrations

TABLES = ("fhir_idx_token", "fhir_idx_quantity", "fhir_idx_string", "fhir_idx_date")


class Migration(migrations.Migration):
    dependencies = [
        ("fhir", "0007_index_rows_without_fk_constraint"),
    ]

    operations = [
        migrations.RunSQL(
            [
                f"DELETE FROM {table} WHERE resource_type = 'Observation' AND param LIKE 'combo-%'"
                for table in TABLES
            ],
            reverse_sql=migrations.RunSQL.noop,
        )
    ]
