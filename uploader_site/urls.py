from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from uploader_site.throttling import ThrottledAdminLoginForm

admin.site.site_header = "Data Uploader"
admin.site.site_title = "Data Uploader"
admin.site.index_title = "Control room"
admin.site.login_form = ThrottledAdminLoginForm

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("", include("sessions_app.urls")),
    path("admin/", admin.site.urls),
]
