from django.urls import path

from sessions_app import api, tus, views

urlpatterns = [
    path("api/sessions/<int:pk>/", views.session_status, name="session-status"),
    path("api/queue-upload/", api.queue_upload, name="queue-upload"),
    path("api/uploader-stats/", api.uploader_stats, name="uploader-stats"),
    path("api/projects/<str:name>/uploads/", tus.manifest, name="upload-manifest"),
    path("api/uploads/", tus.creation, name="tus-creation"),
    path("api/uploads/<str:upload_id>", tus.upload, name="tus-upload"),
]
