"""Admin login throttling.

After LOGIN_FAILURE_LIMIT failed logins for one username from one address within
LOGIN_FAILURE_WINDOW_SECONDS, that pair is refused for LOGIN_COOLOFF_SECONDS, the right password
included; a successful login clears its failures. The counts live in the shared cache (the
database cache, or Redis), so every web process counts together. Each attempt claims one of the
LOGIN_FAILURE_LIMIT slots with an atomic `cache.add` *before* the password is checked, so parallel
requests cannot try more passwords than the limit either.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import HttpRequest

log = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """REMOTE_ADDR, or the last entry of LOGIN_CLIENT_IP_HEADER: the one our own proxy added."""
    forwarded = request.META.get(settings.LOGIN_CLIENT_IP_HEADER, "") if settings.LOGIN_CLIENT_IP_HEADER else ""
    return forwarded.split(",")[-1].strip() or request.META.get("REMOTE_ADDR", "")


class LoginThrottle:
    """The failed logins of one username from one address."""

    def __init__(self, username: str, address: str):
        digest = hashlib.sha256(f"{username}\0{address}".encode()).hexdigest()
        self.username, self.address = username, address
        self.lock_key = f"login-lock:{digest}"
        self.slot_keys = [f"login-failure:{digest}:{i}" for i in range(settings.LOGIN_FAILURE_LIMIT)]

    def claim(self) -> bool:
        """Take a slot for one attempt; False while locked or when every slot is taken."""
        if cache.get(self.lock_key) is not None:
            return False
        return any(cache.add(key, 1, settings.LOGIN_FAILURE_WINDOW_SECONDS) for key in self.slot_keys)

    def failures(self) -> int:
        """Attempts within the window that did not succeed (or are still being checked)."""
        return len(cache.get_many(self.slot_keys))

    def failed(self) -> None:
        if self.failures() < len(self.slot_keys):
            return
        cooloff = settings.LOGIN_COOLOFF_SECONDS
        cache.set(self.lock_key, time.time() + cooloff, cooloff)
        cache.delete_many(self.slot_keys)  # the lock holds from here; after it, a fresh count
        log.warning("admin login locked for %r from %s for %d s after %d failed attempts",
                    self.username, self.address, cooloff, len(self.slot_keys))

    def succeeded(self) -> None:
        cache.delete_many(self.slot_keys)

    def refusal(self) -> str:
        until = cache.get(self.lock_key)
        minutes = math.ceil(max(until - time.time(), 1) / 60) if until else 1
        return (f"Too many failed login attempts for this username from your address. "
                f"Try again in {minutes} minute{'' if minutes == 1 else 's'}.")


class ThrottledAdminLoginForm(AdminAuthenticationForm):
    """The admin login form, refusing a username+address pair that failed too often."""

    def clean(self):
        if self.cleaned_data.get("username") is None or not self.cleaned_data.get("password"):
            return super().clean()  # a field is missing: nothing is tried, the form says what
        throttle = LoginThrottle(self.cleaned_data["username"], client_address(self.request))
        if not throttle.claim():
            raise ValidationError(throttle.refusal(), code="throttled")
        try:
            cleaned = super().clean()
        except ValidationError:
            throttle.failed()
            raise
        throttle.succeeded()
        return cleaned
