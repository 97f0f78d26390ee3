from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor) -> None:
    """The DatabaseCache table (settings.CACHES) that holds django-q2's cluster heartbeats:
    created by `migrate`, so the embedded set-up stays one command. A no-op for other caches."""
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("projects", "0002_project_health")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
