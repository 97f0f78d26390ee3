from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('projects', '0005_project_notify_url_env'),
    ]

    operations = [
        migrations.AddField(
            model_name='project',
            name='check_destination_every',
            field=models.FloatField(blank=True, default=None, null=True),
        ),
    ]
