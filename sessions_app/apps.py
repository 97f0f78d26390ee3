import sys

from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sessions_app"
    verbose_name = "Sync sessions"

    def ready(self) -> None:
        # Django requires it here: receivers connect once the app registry is ready.
        from sessions_app import followups, signals  # noqa: F401 (signal receivers)

        if sys.argv[1:2] == ["qcluster"]:  # before the cluster forks its workers: they share it
            from projects.destinations import s3

            s3.preload()
