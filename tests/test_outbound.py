"""projects/outbound.py: which addresses a notification may reach, the deadline and the size bound of
one request, and what of a URL is stored or shown; against real HTTP receivers on loopback."""

from __future__ import annotations

import ipaddress
import resource
import socket

import pytest

from projects import outbound
from projects.errors import NotifyError
from tests.conftest import wait_for

MiB = 2**20
LOOPBACK_SPELLINGS = ["127.0.0.1", "0x7f000001", "2130706433", "127.1", "localhost", "[::ffff:127.0.0.1]"]


def _post(url: str, timeout: float = 5.0) -> outbound.Reply:
    return outbound.post(url, b'{"event": "test"}', {"Content-Type": "application/json"}, timeout)


def _refusal(url: str) -> NotifyError:
    with pytest.raises(NotifyError) as err:
        _post(url)
    assert err.value.permanent
    return err.value


# -- addresses --------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_loopback_in_any_spelling_is_reached_only_when_its_network_is_allowed(receiver, settings, host):
    url = receiver.url("/internal", host=host)
    settings.NOTIFY_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    assert _post(url).excerpt == '{"ok": true, "status": 200}', "the attack, reproduced: the reply comes back"

    settings.NOTIFY_ALLOWED_NETWORKS = []
    refused = _refusal(url)

    assert refused.message.startswith(f"refused {host.strip('[]')}: ")
    assert "is a loopback address" in refused.message and "NOTIFY_ALLOWED_NETWORKS" in refused.message
    settings.NOTIFY_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    _post(url)
    assert receiver.connections == 2, "the refused request opened no connection (accepts are in order)"


def test_ipv6_loopback_is_refused_unless_allowed(receiver_v6, settings):
    url = receiver_v6.url()  # http://[::1]:port/hook, like http://[::1]:22/
    settings.NOTIFY_ALLOWED_NETWORKS = ["::1/128"]
    assert _post(url).status == 200

    settings.NOTIFY_ALLOWED_NETWORKS = ["127.0.0.0/8"]  # IPv4 loopback only
    assert "::1 is a loopback address" in _refusal(url).message

    settings.NOTIFY_ALLOWED_NETWORKS = ["::1/128"]
    _post(url)
    assert receiver_v6.connections == 2


def test_cloud_metadata_address_is_refused_before_any_connection(settings):
    """Nothing listens on 169.254.169.254 here: an attempt would end in a connect error or a
    timeout; the refusal names the address instead, so none was made."""
    settings.NOTIFY_ALLOWED_NETWORKS = []
    refused = _refusal("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    assert refused.message.startswith("refused 169.254.169.254: 169.254.169.254 is a link-local address")


@pytest.mark.parametrize("ip, kind", [
    ("169.254.169.254", "link-local"), ("127.0.0.1", "loopback"), ("10.1.2.3", "private"),
    ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("100.64.0.1", "non-public"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"), ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"),
    ("fe80::1%1", "link-local"), ("fc00::1", "private"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("::ffff:169.254.169.254", "link-local"), ("::ffff:10.0.0.1", "private"), ("::a9fe:a9fe", "reserved"),
    ("64:ff9b::7f00:1", "reserved"), ("2002:a9fe:a9fe::", "link-local"),
])
def test_addresses_that_are_not_public_are_refused(ip, kind):
    assert outbound.Policy().refusal(ip) == f"{ip} is a {kind} address"


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(ip):
    assert outbound.Policy().refusal(ip) == ""


def test_an_allowed_network_admits_its_addresses_also_inside_ipv6():
    policy = outbound.Policy((ipaddress.ip_network("10.0.0.0/8"),))
    assert [policy.refusal(ip) for ip in ("10.9.8.7", "::ffff:10.9.8.7")] == ["", ""]
    assert policy.refusal("192.168.1.1") == "192.168.1.1 is a private address"


def test_a_bad_allowed_network_is_a_clear_error(settings):
    settings.NOTIFY_ALLOWED_NETWORKS = ["10.0.0.0/8", "intranet"]
    with pytest.raises(NotifyError, match=r"NOTIFY_ALLOWED_NETWORKS: 'intranet' is not a network"):
        outbound.Policy.from_settings()


def test_connect_time_guard_refuses_a_forbidden_address_whatever_name_it_came_from(receiver):
    """DNS rebinding: a name checked once may resolve elsewhere when the connection is made. The
    connection never resolves on its own: its socket is opened by this guard, from the addresses
    resolved for it, and the guard checks each one before any socket exists. Here it is handed the
    addresses a rebound name would give (the receiver's, from the real resolver) under a name that
    says nothing about them."""
    addresses = socket.getaddrinfo("127.0.0.1", receiver.port, type=socket.SOCK_STREAM)

    with outbound.Deadline(5) as deadline:
        with pytest.raises(NotifyError, match=r"refused hooks\.example\.com: 127\.0\.0\.1 is a loopback address"):
            outbound.Policy().connect("hooks.example.com", addresses, deadline)
        allowed = outbound.Policy((ipaddress.ip_network("127.0.0.0/8"),))
        allowed.connect("hooks.example.com", addresses, deadline).close()

    wait_for(lambda: receiver.connections == 1, 10, "the allowed connection")
    assert receiver.connections == 1, "only the allowed connection reached the receiver"


def test_proxy_settings_of_the_environment_are_not_used(receiver, refused_url, loopback_allowed, monkeypatch):
    """A proxy would be the address checked, not the endpoint: requests go direct."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, refused_url)
    assert _post(receiver.url()).status == 200


# -- bounds -----------------------------------------------------------------------------------------


def test_a_trickling_endpoint_is_cut_off_at_the_deadline(receiver, loopback_allowed):
    receiver.trickle_next(1)

    with pytest.raises(NotifyError) as err:
        _post(receiver.url(), timeout=0.5)

    assert (err.value.message, err.value.permanent) == ("no answer within 0.5s (timeout)", False)
    sent = receiver.wait_for_hang_up()
    assert 0 < sent < len("HTTP/1.1 200 OK\r\n"), "the client hung up while the status line was still trickling"


def test_a_huge_answer_is_read_only_as_far_as_the_excerpt(receiver, loopback_allowed):
    size = 200 * MiB
    receiver.huge_next(1, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    reply = _post(receiver.url())

    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert reply.status == 200
    assert reply.excerpt == "x" * outbound.EXCERPT_BYTES
    assert grown < 50 * 1024, f"peak memory grew by {grown} KiB"
    assert receiver.wait_for_hang_up() < size, "the client hung up long before the end of the body"


# -- URLs as stored and shown -----------------------------------------------------------------------


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.example.com/in", "https://hooks.example.com/in"),
    ("https://alice:s3cret@hooks.example.com/in", "https://hooks.example.com/in"),
    ("https://hooks.example.com/in?token=abc123&source=uploader", "https://hooks.example.com/in?token=***&source=***"),
    ("https://hooks.example.com/in?abc123", "https://hooks.example.com/in?***"),
    ("https://hooks.example.com/in#key=abc", "https://hooks.example.com/in#***"),
    ("https://hooks.slack.com/services/T0AAAA1BB/B0CCCC2DD/abcDEF123ghiJKL456mnoPQR",
     "https://hooks.slack.com/services/T0AAAA1BB/B0CCCC2DD/***"),
    ("https://discord.com/api/webhooks/123456789012345678/Ab-cD_ef12GhIjKl34MnOpQr56StUvWx78YzAbCdEf90GhIjKlMn",
     "https://discord.com/api/webhooks/123456789012345678/***"),
    ("https://acme.webhook.office.com/webhookb2/0f8fad5b-d9cb-469f-a165-70867728950e@72f988bf-86f1-41af-91ab-"
     "2d7cd011db47/IncomingWebhook/5b6cf5e2c3d34ed7a8f0f9b0c1d2e3f4/0f8fad5b-d9cb-469f-a165-70867728950e",
     "https://acme.webhook.office.com/webhookb2/***/IncomingWebhook/***/***"),
    ("http://[::1]:8080/session-notifications", "http://[::1]:8080/session-notifications"),
])
def test_redact_url_hides_what_may_be_a_secret(url, shown):
    assert outbound.redact_url(url) == shown
