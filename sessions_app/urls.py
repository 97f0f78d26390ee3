from django.contrib import admin
from django.urls import path

from sessions_app import api, tus, views

urlpatterns = [
    path("admin/dashboard/", admin.site.admin_view(views.dashboard), name="dashboard"),
    path("api/overview/", views.dashboard_data, name="dashboard-data"),
    path("metrics", views.metrics, name="metrics"),
    path("api/sessions/<int:pk>/", views.session_status, name="session-status"),
    path("api/sessions/<int:pk>/files.csv", views.session_files_csv, name="session-files-csv"),
    path("api/queue-upload/", api.queue_upload, name="queue-upload"),
    path("api/uploader-stats/", api.uploader_stats, name="uploader-stats"),
    path("api/projects/<str:name>/uploads/", tus.manifest, name="upload-manifest"),
    path("api/uploads/", tus.creation, name="tus-creation"),
    path("api/uploads/<str:upload_id>", tus.upload, name="tus-upload"),
]
