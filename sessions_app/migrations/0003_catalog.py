"""The catalog (what we know is at each destination), skip counts on the session instead of a row
per skipped file, and the catalog built from the rows of earlier sessions, so that upgrading
users do not upload again what is already there."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models
from django.db.models import Q

BATCH = 2000


def bytewise_keys(apps, schema_editor):
    """Keys sort bytewise, in the order the scan and every listing yield them (the plan merges
    them); SQLite's default collation already does."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute('ALTER TABLE sessions_app_catalogentry ALTER COLUMN "key" TYPE varchar(4096) '
                              'COLLATE "C"')


def _identity(kind, options):
    # The product's own code: the identity of a destination is the destination's to say.
    from projects.destinations import ConfigError, build_destination

    try:
        return build_destination(kind, dict(options)).identity()
    except (ConfigError, ImportError):
        return None


def _where(session):
    """(destination identity, source folder) a session ran with: its recorded config, else its project's."""
    project = session.project
    config = session.config.config if session.config_id else {}
    destination = dict(config.get("destination") or {})
    kind = destination.pop("type", None)
    identity = _identity(kind, destination) if kind else None
    if identity is None:
        identity = _identity(project.destination_kind, project.destination_options)
    return identity, config.get("source_dir") or project.source_dir


def build_catalogs(apps, schema_editor):
    SyncSession = apps.get_model("sessions_app", "SyncSession")
    FileUpload = apps.get_model("sessions_app", "FileUpload")
    Catalog = apps.get_model("sessions_app", "Catalog")
    CatalogEntry = apps.get_model("sessions_app", "CatalogEntry")
    arrived = Q(status="uploaded") | Q(status="skipped", skip_reason="duplicate")
    fields = ("relative_path", "size", "mtime", "checksum", "remote_id", "session", "arrived_at")
    for session in SyncSession.objects.select_related("project", "config").order_by("id").iterator():
        rows = FileUpload.objects.filter(arrived, session=session).order_by("id")
        if not rows.exists():
            continue
        identity, source_dir = _where(session)
        if identity is None:
            continue
        # Never listed: the first sync after the upgrade lists the destination once (as every sync
        # did before) and adopts what earlier syncs skipped as already there.
        catalog, _ = Catalog.objects.update_or_create(project_id=session.project_id, destination=identity,
                                                      defaults={"source_dir": source_dir})
        batch = {}
        for row in rows.values_list("relative_path", "remote_key", "size", "mtime", "checksum", "remote_id",
                                    "uploaded_at").iterator(chunk_size=BATCH):
            path, key, size, mtime, checksum, remote_id, uploaded_at = row
            batch[key] = CatalogEntry(catalog=catalog, key=key, relative_path="" if path == key else path, size=size,
                                      mtime=mtime, checksum=checksum, remote_id=remote_id, session=session,
                                      arrived_at=uploaded_at or session.created_at)
            if len(batch) >= BATCH:
                _upsert(CatalogEntry, batch, fields)
        _upsert(CatalogEntry, batch, fields)


def _upsert(CatalogEntry, batch, fields):
    CatalogEntry.objects.bulk_create(list(batch.values()), update_conflicts=True, unique_fields=["catalog", "key"],
                                     update_fields=list(fields))
    batch.clear()


class Migration(migrations.Migration):

    dependencies = [
        ('projects', '0006_project_check_destination_every'),
        ('sessions_app', '0002_fileupload_file_identity'),
    ]

    operations = [
        migrations.AddField(
            model_name='syncsession',
            name='skipped_bytes',
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='syncsession',
            name='skips',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.CreateModel(
            name='Catalog',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('destination', models.CharField(help_text='e.g. s3://bucket/prefix', max_length=2000)),
                ('source_dir', models.CharField(blank=True, default='', help_text='the source folder its entries came from', max_length=1024)),
                ('listed_at', models.DateTimeField(blank=True, help_text='last full listing of the destination', null=True)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='catalogs', to='projects.project')),
            ],
            options={
                'ordering': ['project', 'destination'],
                'constraints': [models.UniqueConstraint(fields=('project', 'destination'), name='unique_catalog')],
            },
        ),
        migrations.CreateModel(
            name='CatalogEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(max_length=4096)),
                ('relative_path', models.CharField(blank=True, default='', help_text='the source file; blank when it is the key itself', max_length=4096)),
                ('size', models.BigIntegerField()),
                ('mtime', models.FloatField(blank=True, null=True)),
                ('checksum', models.CharField(blank=True, default='', max_length=200)),
                ('remote_id', models.CharField(blank=True, default='', max_length=200)),
                ('arrived_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('catalog', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='entries', to='sessions_app.catalog')),
                ('session', models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='arrivals', to='sessions_app.syncsession')),
            ],
            options={
                'verbose_name_plural': 'catalog entries',
                'constraints': [models.UniqueConstraint(fields=('catalog', 'key'), name='unique_catalog_key')],
            },
        ),
        migrations.RunPython(bytewise_keys, migrations.RunPython.noop),
        migrations.RunPython(build_catalogs, migrations.RunPython.noop),
        # Planning no longer asks earlier sessions' rows for a file: the catalog answers.
        migrations.RemoveIndex(
            model_name='fileupload',
            name='file_project_path',
        ),
    ]
