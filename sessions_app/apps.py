from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "sessions_app"
    verbose_name = "Sync sessions"

    def ready(self) -> None:
        from sessions_app import retrying, signals  # noqa: F401 (signal receivers)
