"""Observability: catalog tallies, per-project hourly throughput, and the SQL views Grafana's
PostgreSQL (or SQLite) source reads (README "Observability")."""

import django.db.models.deletion
from django.db import migrations, models

VIEWS = {
    # Per day and project: files and bytes uploaded, files failed (from the hourly throughput).
    "uploader_daily_uploads": """
        SELECT {day} AS day, p.name AS project, SUM(t.uploaded) AS files, SUM(t.uploaded_bytes) AS bytes,
               SUM(t.failed) AS failed
        FROM sessions_app_throughput t JOIN projects_project p ON p.id = t.project_id
        GROUP BY {day}, p.name""",
    # Per hour and project, as stored.
    "uploader_hourly_uploads": """
        SELECT t.hour AS hour, p.name AS project, t.uploaded AS files, t.uploaded_bytes AS bytes,
               t.failed AS failed
        FROM sessions_app_throughput t JOIN projects_project p ON p.id = t.project_id""",
    # Failed files by project and reason (the error's first line, 200 characters): ORDER BY files DESC LIMIT N.
    "uploader_failure_reasons": """
        SELECT p.name AS project, SUBSTR(f.last_error, 1, 200) AS reason, COUNT(*) AS files,
               MAX(f.created_at) AS last_seen
        FROM sessions_app_fileupload f JOIN projects_project p ON p.id = f.project_id
        WHERE f.status = 'failed'
        GROUP BY p.name, SUBSTR(f.last_error, 1, 200)""",
}


def create_views(apps, schema_editor):
    day = "CAST(t.hour AS date)" if schema_editor.connection.vendor == "postgresql" else "date(t.hour)"
    for name, sql in VIEWS.items():
        schema_editor.execute(f"CREATE VIEW {name} AS {sql.format(day=day)}")


def drop_views(apps, schema_editor):
    for name in VIEWS:
        schema_editor.execute(f"DROP VIEW IF EXISTS {name}")


class Migration(migrations.Migration):

    dependencies = [
        ('projects', '0006_project_check_destination_every'),
        ('sessions_app', '0003_catalog'),
    ]

    operations = [
        migrations.AddField(
            model_name='catalog',
            name='byte_count',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='catalog',
            name='object_count',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='catalog',
            name='tallied_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name='Throughput',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hour', models.DateTimeField(help_text='start of the hour (UTC)')),
                ('uploaded', models.BigIntegerField(default=0)),
                ('uploaded_bytes', models.BigIntegerField(default=0)),
                ('failed', models.BigIntegerField(default=0)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='throughput', to='projects.project')),
            ],
            options={
                'ordering': ['project', 'hour'],
                'constraints': [models.UniqueConstraint(fields=('project', 'hour'), name='unique_throughput_hour')],
            },
        ),
        migrations.RunPython(create_views, drop_views),
    ]
