"""S3Destination against moto on loopback: errors and how permanent they are, multipart,
prefixes, key normalisation, paginated listing, options."""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata

import pytest
from botocore.httpsession import DEFAULT_CA_BUNDLE

from projects.destinations import ConfigError, DestinationError, RemoteObject, build_destination
from projects.destinations.s3 import S3Destination
from tests.servers.s3 import free_port, raw_client

MiB = 1024 * 1024


@pytest.fixture
def make_file(tmp_path):
    counter = iter(range(1_000_000))

    def make(content: bytes) -> str:
        path = tmp_path / f"file-{next(counter)}"
        path.write_bytes(content)
        return str(path)

    return make


def keys_in(s3_server, bucket: str) -> list[str]:
    pages = s3_server.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


# -- bucket and credentials ---------------------------------------------------------------
def test_check_of_a_missing_bucket_is_permanent_not_found(s3_server):
    dest = S3Destination({"bucket": "no-such-bucket-here", "endpoint_url": s3_server.endpoint_url})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "not found" in info.value.message
    assert "no-such-bucket-here" in info.value.message
    assert dest.health() == (False, info.value.message)


def test_check_with_credentials_the_server_refuses_is_permanent(s3_auth_server):
    # The session's credentials ("testing") belong to no IAM user of the auth-checking server.
    dest = S3Destination({"bucket": s3_auth_server.bucket, "endpoint_url": s3_auth_server.endpoint_url})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "credentials refused" in info.value.message


def test_upload_with_credentials_the_server_refuses_is_permanent(s3_auth_server, make_file):
    dest = S3Destination({"bucket": s3_auth_server.bucket, "endpoint_url": s3_auth_server.endpoint_url})

    with pytest.raises(DestinationError) as info:
        dest.upload(make_file(b"data"), "refused.bin")

    assert info.value.permanent is True
    assert "InvalidAccessKeyId" in info.value.message


def _credentials_file(tmp_path, monkeypatch, **profiles: tuple[str, str]) -> None:
    path = tmp_path / "credentials"
    path.write_text("".join(
        f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n"
        for name, (key, secret) in profiles.items()
    ))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))


def test_credentials_of_a_known_user_pass_and_a_wrong_secret_is_permanent(
    s3_auth_server, tmp_path, monkeypatch, make_file
):
    _credentials_file(
        tmp_path, monkeypatch,
        uploader=(s3_auth_server.access_key_id, s3_auth_server.secret_access_key),
        wrong_secret=(s3_auth_server.access_key_id, "not-the-secret"),
    )
    base = {"bucket": s3_auth_server.bucket, "endpoint_url": s3_auth_server.endpoint_url}

    with S3Destination({**base, "aws_profile": "uploader"}) as good:
        good.check()
        assert good.upload(make_file(b"signed"), "signed.bin").size == 6
        assert good.stat("signed.bin") == RemoteObject("signed.bin", 6)

    with S3Destination({**base, "aws_profile": "wrong_secret"}) as bad:
        with pytest.raises(DestinationError) as info:
            bad.upload(make_file(b"data"), "unsigned.bin")
    assert info.value.permanent is True
    assert "SignatureDoesNotMatch" in info.value.message


def test_keys_urls_escape_and_a_storage_class_are_signed_as_sent(s3_auth_server, tmp_path, monkeypatch, make_file):
    # Single PUTs are signed by projects/destinations/s3put.py: the server recomputes the signature
    # over the escaped path and the x-amz-* headers.
    _credentials_file(tmp_path, monkeypatch, uploader=(s3_auth_server.access_key_id,
                                                       s3_auth_server.secret_access_key))
    base = {"bucket": s3_auth_server.bucket, "endpoint_url": s3_auth_server.endpoint_url, "aws_profile": "uploader"}
    keys = ["a+b/c%20d.txt", "q?x=1#frag.bin", "semi;colon,comma=eq&amp.txt", "tilde~/sp ace/*star'quote\".bin",
            "é/日本語/🙂.wav"]

    with S3Destination({**base, "prefix": "odd names", "storage_class": "STANDARD_IA"}) as dest:
        for i, key in enumerate(keys):
            assert dest.upload(make_file(bytes(i + 1)), key).size == i + 1
        assert [dest.stat(k) for k in keys] == [RemoteObject(k, i + 1) for i, k in enumerate(keys)]


def test_credentials_that_expire_are_asked_for_again_and_sign_uploads(s3_auth_server, tmp_path, monkeypatch,
                                                                     make_file):
    # A credential_process with an expiry gives botocore refreshable credentials: the single-PUT
    # path asks botocore for them at each signature instead of keeping a copy.
    answer = tmp_path / "creds.json"
    answer.write_text(json.dumps({"Version": 1, "AccessKeyId": s3_auth_server.access_key_id,
                                  "SecretAccessKey": s3_auth_server.secret_access_key,
                                  "Expiration": "2999-01-01T00:00:00Z"}))
    config = tmp_path / "config"
    config.write_text(f"[profile rotating]\ncredential_process = cat {answer}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    base = {"bucket": s3_auth_server.bucket, "endpoint_url": s3_auth_server.endpoint_url}

    with S3Destination({**base, "aws_profile": "rotating"}) as dest:
        assert dest.upload(make_file(b"rotating"), "rotating.bin").size == 8
        assert dest.stat("rotating.bin") == RemoteObject("rotating.bin", 8)


def test_unknown_aws_profile_is_permanent(s3_server):
    dest = S3Destination({"bucket": "any", "endpoint_url": s3_server.endpoint_url, "aws_profile": "nobody"})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "'nobody' not found" in info.value.message


def test_no_credentials_anywhere_is_permanent(s3_server, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    dest = S3Destination({"bucket": s3_server.make_bucket(), "endpoint_url": s3_server.endpoint_url})

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is True
    assert "no AWS credentials" in info.value.message


# -- transient and permanent server errors ---------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "expected", "throttled"),
    [("503", "503 SlowDown", True), ("429", "429 TooManyRequests", True), ("500", "500 InternalError", False),
     ("drop", "connection to", False)],
)
def test_server_trouble_during_upload_is_transient_and_the_next_upload_succeeds(
    fault_proxy, make_s3_destination, make_file, kind, expected, throttled
):
    dest = make_s3_destination(via_proxy=fault_proxy)
    fault_proxy.fail_next(1, kind, "PUT", path_contains="/flaky.bin")

    with pytest.raises(DestinationError) as info:
        dest.upload(make_file(b"payload"), "flaky.bin")

    assert info.value.permanent is False
    assert info.value.throttled is throttled  # a throttling answer slows the session (sessions_app/pacing.py)
    assert expected in info.value.message
    # One attempt only: retrying is the caller's job, counted per file.
    assert fault_proxy.count("PUT", "/flaky.bin") == 1
    assert dest.stat("flaky.bin") is None

    assert dest.upload(make_file(b"payload"), "flaky.bin").size == 7
    assert fault_proxy.count("PUT", "/flaky.bin", outcome="forwarded") == 1
    assert dest.stat("flaky.bin") == RemoteObject("flaky.bin", 7)


def test_access_denied_on_upload_is_permanent(fault_proxy, make_s3_destination, make_file):
    dest = make_s3_destination(via_proxy=fault_proxy)
    fault_proxy.fail_next(1, "403", "PUT")

    with pytest.raises(DestinationError) as info:
        dest.upload(make_file(b"payload"), "denied.bin")

    assert info.value.permanent is True
    assert "403 AccessDenied" in info.value.message


@pytest.mark.parametrize(("kind", "permanent"), [("503", False), ("500", False), ("drop", False), ("403", True)])
def test_check_classifies_server_errors(fault_proxy, make_s3_destination, kind, permanent):
    dest = make_s3_destination(via_proxy=fault_proxy)
    fault_proxy.fail_next(1, kind, "HEAD")

    with pytest.raises(DestinationError) as info:
        dest.check()

    assert info.value.permanent is permanent
    dest.check()  # the fault was one request; the bucket is fine


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_stat_raises_on_server_trouble_instead_of_reporting_missing(fault_proxy, make_s3_destination, make_file,
                                                                    kind):
    dest = make_s3_destination(via_proxy=fault_proxy)
    dest.upload(make_file(b"abc"), "present.bin")
    fault_proxy.fail_next(1, kind, "HEAD")

    with pytest.raises(DestinationError) as info:
        dest.stat("present.bin")

    assert info.value.permanent is False
    assert dest.stat("present.bin") == RemoteObject("present.bin", 3)


def test_listing_interrupted_by_server_trouble_is_transient(fault_proxy, make_s3_destination, make_file):
    dest = make_s3_destination(via_proxy=fault_proxy)
    dest.upload(make_file(b"abc"), "a.bin")
    fault_proxy.fail_next(1, "500", "GET", path_contains="list-type=2")

    with pytest.raises(DestinationError) as info:
        list(dest.list_existing())

    assert info.value.permanent is False
    assert list(dest.list_existing()) == [RemoteObject("a.bin", 3)]


# -- multipart -------------------------------------------------------------------------------
def test_file_above_the_multipart_threshold_goes_up_in_parts(s3_server, fault_proxy, make_s3_destination, make_file):
    content = os.urandom(12 * MiB + 123)
    dest = make_s3_destination(via_proxy=fault_proxy, prefix="big", multipart_threshold_mb=5,
                               multipart_chunk_mb=5)

    result = dest.upload(make_file(content), "video.bin")

    assert result.size == len(content)
    assert dest.stat("video.bin") == RemoteObject("video.bin", len(content))
    assert fault_proxy.count("POST", "/big/video.bin?uploads") == 1
    assert fault_proxy.count("PUT", "partNumber=") == 3
    assert fault_proxy.count("PUT", "/big/video.bin?uploadId=") == 3
    assert fault_proxy.count_by_path("PUT") == {f"/{dest.bucket}/big/video.bin": 3}
    assert fault_proxy.count("POST", "/big/video.bin?uploadId=") == 1
    body = s3_server.client.get_object(Bucket=dest.bucket, Key="big/video.bin")["Body"].read()
    assert hashlib.md5(body).hexdigest() == hashlib.md5(content).hexdigest()


def test_file_at_the_threshold_goes_up_in_one_put(fault_proxy, make_s3_destination, make_file):
    dest = make_s3_destination(via_proxy=fault_proxy, multipart_threshold_mb=5)

    dest.upload(make_file(b"\0" * (5 * MiB)), "exactly.bin")

    assert fault_proxy.count("PUT", "/exactly.bin") == 1
    assert fault_proxy.count("POST") == 0


@pytest.mark.parametrize(("kind", "permanent"), [("503", False), ("403", True)])
def test_failed_part_fails_the_upload_and_leaves_no_multipart_upload_behind(
    s3_server, fault_proxy, make_s3_destination, make_file, kind, permanent
):
    dest = make_s3_destination(via_proxy=fault_proxy, multipart_threshold_mb=5, multipart_chunk_mb=5)
    fault_proxy.fail_next(1, kind, "PUT", path_contains="partNumber=2")

    with pytest.raises(DestinationError) as info:
        dest.upload(make_file(os.urandom(11 * MiB)), "parts.bin")

    assert info.value.permanent is permanent
    assert dest.stat("parts.bin") is None
    assert s3_server.client.list_multipart_uploads(Bucket=dest.bucket).get("Uploads", []) == []


def test_proxy_carries_a_64_mib_object_intact_both_ways(fault_proxy, make_s3_destination, make_file):
    content = os.urandom(64 * MiB)
    dest = make_s3_destination(via_proxy=fault_proxy)  # 64 MiB is not above the default threshold

    result = dest.upload(make_file(content), "large.bin")

    assert result.size == 64 * MiB
    assert fault_proxy.count("PUT", "/large.bin") == 1
    assert result.checksum == hashlib.md5(content).hexdigest()
    body = raw_client(fault_proxy.endpoint_url).get_object(Bucket=dest.bucket, Key="large.bin")["Body"].read()
    assert body == content


# -- keys, prefixes and listing ------------------------------------------------------------
def test_prefix_is_normalised_and_listing_sees_only_what_is_under_it(s3_server, make_s3_destination, make_file):
    dest = make_s3_destination(prefix="/photos/2024/")
    for key in ("photos/2024x/other.jpg", "photos/top.jpg", "elsewhere.jpg"):
        s3_server.client.put_object(Bucket=dest.bucket, Key=key, Body=b"x")

    dest.upload(make_file(b"jpeg"), "day1/a.jpg")

    assert dest.prefix == "photos/2024"
    assert dest.describe()["prefix"] == "photos/2024"
    assert "photos/2024/day1/a.jpg" in keys_in(s3_server, dest.bucket)
    assert list(dest.list_existing()) == [RemoteObject("day1/a.jpg", 4)]
    assert dest.stat("day1/a.jpg") == RemoteObject("day1/a.jpg", 4)


def test_without_a_prefix_the_whole_bucket_is_listed(s3_server, make_s3_destination, make_file):
    dest = make_s3_destination()
    s3_server.client.put_object(Bucket=dest.bucket, Key="deep/existing.txt", Body=b"12")

    dest.upload(make_file(b"abc"), "/top.txt")

    assert keys_in(s3_server, dest.bucket) == ["deep/existing.txt", "top.txt"]
    assert list(dest.list_existing()) == [RemoteObject("deep/existing.txt", 2), RemoteObject("top.txt", 3)]


def test_keys_and_prefix_are_stored_nfc_normalised(s3_server, make_s3_destination, make_file):
    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    dest = make_s3_destination(prefix=nfd("Müsik"))

    dest.upload(make_file(b"la"), nfd("café/chanson é.wav"))

    assert keys_in(s3_server, dest.bucket) == ["Müsik/café/chanson é.wav"]
    assert list(dest.list_existing()) == [RemoteObject("café/chanson é.wav", 2)]
    assert dest.stat(nfd("café/chanson é.wav")).size == 2


def test_keys_with_characters_urls_escape_arrive_as_they_are(s3_server, make_s3_destination, make_file):
    dest = make_s3_destination(prefix="odd names")
    keys = ["a+b/c%20d.txt", "q?x=1#frag.bin", "semi;colon,comma=eq&amp.txt", "tilde~/sp ace/*star'quote\".bin",
            "é/日本語/🙂.wav", "dot./..name"]

    for i, key in enumerate(keys):
        assert dest.upload(make_file(bytes(i + 1)), key).size == i + 1

    assert sorted(keys_in(s3_server, dest.bucket)) == sorted(f"odd names/{k}" for k in keys)
    assert [dest.stat(k) for k in keys] == [RemoteObject(k, i + 1) for i, k in enumerate(keys)]


def test_an_empty_file_is_stored_empty(s3_server, make_s3_destination, make_file):
    dest = make_s3_destination()

    result = dest.upload(make_file(b""), "empty.txt")

    assert result.size == 0
    assert result.checksum == hashlib.md5(b"").hexdigest()
    assert s3_server.client.get_object(Bucket=dest.bucket, Key="empty.txt")["Body"].read() == b""


def test_many_threads_share_one_destination(s3_server, make_s3_destination, make_file):
    from concurrent.futures import ThreadPoolExecutor

    dest = make_s3_destination()
    files = {f"t/{i:03d}.bin": make_file(os.urandom(i * 97)) for i in range(120)}

    with ThreadPoolExecutor(12) as pool:
        sizes = list(pool.map(lambda item: dest.upload(item[1], item[0]).size, files.items()))

    assert sizes == [i * 97 for i in range(120)]
    assert list(dest.list_existing()) == [RemoteObject(k, i * 97) for i, k in enumerate(files)]


def test_behind_a_proxy_uploads_go_through_it(s3_server, make_s3_destination, make_file, monkeypatch):
    # The CRT's direct connections know no proxy: behind one, botocore (which does) sends. Here the
    # proxy does not answer, so an upload that reached moto directly would have ignored it.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    dest = make_s3_destination()

    with pytest.raises(DestinationError) as info:
        dest.upload(make_file(b"proxied"), "proxied.bin")

    assert info.value.permanent is False
    assert "proxy" in info.value.message.lower()
    assert keys_in(s3_server, dest.bucket) == []


def test_a_ca_bundle_of_the_aws_configuration_is_trusted_not_a_reason_to_go_slow(make_s3_destination, make_file,
                                                                               monkeypatch):
    # AWS_CA_BUNDLE (set on many machines) is for TLS: the single-PUT path takes it as botocore does.
    monkeypatch.setenv("AWS_CA_BUNDLE", DEFAULT_CA_BUNDLE)
    dest = make_s3_destination()

    assert dest.putter is not None
    assert dest.upload(make_file(b"trusted"), "trusted.bin").size == 7


def test_listing_pages_through_more_than_a_thousand_keys(s3_server, fault_proxy, make_s3_destination):
    dest = make_s3_destination(via_proxy=fault_proxy, prefix="many")
    keys = [f"k{i:05d}" for i in range(1100)]
    s3_server.fill(dest.bucket, [f"many/{k}" for k in keys])

    listed = list(dest.list_existing())

    assert listed == [RemoteObject(k, 1) for k in keys]
    assert fault_proxy.count("GET", "list-type=2") == 2


def test_storage_class_is_applied(s3_server, make_s3_destination, make_file):
    dest = make_s3_destination(storage_class="STANDARD_IA")

    dest.upload(make_file(b"cold"), "cold.bin")

    assert s3_server.client.head_object(Bucket=dest.bucket, Key="cold.bin")["StorageClass"] == "STANDARD_IA"


def test_checksum_of_a_single_put_is_the_md5(make_s3_destination, make_file):
    dest = make_s3_destination()

    result = dest.upload(make_file(b"checksum me"), "sum.txt")

    assert result.checksum == hashlib.md5(b"checksum me").hexdigest()


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "destination.bucket: required"),
        ({"bucket": "b", "colour": "blue"}, "destination.colour: unknown option"),
        ({"bucket": 42}, "destination.bucket: expected string, got int"),
        ({"bucket": "b", "multipart_threshold_mb": "64"}, "destination.multipart_threshold_mb: expected integer"),
        ({"bucket": "b", "max_pool_connections": True}, "destination.max_pool_connections: expected integer"),
        ({"bucket": "b", "multipart_chunk_mb": 4}, "multipart_chunk_mb"),
        ({"bucket": "b", "addressing_style": "sideways"}, "destination.addressing_style: must be one of"),
        ({"bucket": "b", "endpoint_url": "ftp://127.0.0.1:21"}, "destination.endpoint_url: must be an http"),
        ({"bucket": "b", "endpoint_url": "127.0.0.1:9000"}, "destination.endpoint_url: must be an http"),
        ({"bucket": "b", "endpoint_url": "http://key:hunter2@127.0.0.1:9000"}, "destination.endpoint_url"),
    ],
)
def test_option_errors_name_the_option(options, named):
    with pytest.raises(ConfigError) as info:
        build_destination("s3", options)

    assert named in str(info.value)
    assert "hunter2" not in str(info.value)


def test_valid_options_get_their_defaults():
    dest = build_destination("s3", {"type": "s3", "bucket": "b", "endpoint_url": "https://s3.example.com"})

    assert dest.options["multipart_threshold_mb"] == 64
    assert dest.options["addressing_style"] == "auto"
    assert dest.prefix == ""
    assert dest.describe() == {"kind": "s3", "bucket": "b", "prefix": "", "endpoint_url": "https://s3.example.com"}


def test_a_cluster_reads_s3_models_once_for_the_destinations_of_its_workers(make_s3_destination):
    from projects.destinations import s3

    s3.preload()  # what a cluster does before it forks its workers (sessions_app.apps)
    dest = make_s3_destination()
    dest.client.list_objects_v2(Bucket=dest.bucket)

    assert dest._botocore_session.get_component("data_loader") is s3._loader
