from django.urls import path

from sessions_app import views

urlpatterns = [
    path("api/sessions/<int:pk>/", views.session_status, name="session-status"),
]
