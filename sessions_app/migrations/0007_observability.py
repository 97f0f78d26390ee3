"""Observability: catalog tallies and per-project hourly throughput (README "Observability"). The
SQL views over them are made after every migrate (sessions_app.reporting), not here."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('projects', '0006_project_check_destination_every'),
        ('sessions_app', '0006_session_pace'),
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
    ]
