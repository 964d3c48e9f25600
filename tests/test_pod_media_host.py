"""The proof-of-delivery photo job sends our Twilio credentials (HTTP Basic) with the
fetch, so it fetches only Twilio's own media URL: a URL on another host is not fetched
and our auth token goes nowhere else."""

from __future__ import annotations

import pytest

from core.services import dispatch


@pytest.mark.parametrize("url", [
    "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
])
def test_twilios_media_url_is_fetched(url):
    assert dispatch.twilio_media_url(url)


def test_the_sandbox_emulators_media_url_is_fetched(clean_db):
    from sandbox.twilio import store_media

    assert dispatch.twilio_media_url(store_media(b"\xff\xd8x", "image/jpeg"))


@pytest.mark.parametrize("url", [
    "http://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",  # not https
    "https://api.twilio.com.evil.example/Media/ME1",
    "https://evil.example/?u=https://api.twilio.com/",
    "https://169.254.169.254/latest/meta-data/",
    "https://api.twilio.com:8443/Media/ME1",
    "not a url",
    "https://[::1/",
])
def test_another_host_is_not_fetched_and_gets_no_credentials(url, monkeypatch):
    sent: list[object] = []
    monkeypatch.setattr(dispatch.requests, "get", lambda *a, **k: sent.append((a, k)))
    assert not dispatch.twilio_media_url(url)
    assert dispatch.fetch_pod_photo(1, 1, url, "image/jpeg") == "not-twilio"
    assert sent == []  # no request at all, so no Authorization header anywhere


def test_a_failed_fetch_names_no_url(live):
    """Twilio redirects a media URL to its store's signed URL (a credential for a while);
    requests' error named the URL that answered, and RQ logs a failed job's error and
    keeps it in Redis. The job's error now says what failed, not where."""
    from sandbox.twilio import store_media

    url = (store_media(b"\xff\xd8x", "image/jpeg").rsplit("/", 1)[0]
           + "/MEgone?X-Amz-Signature=s3cr3tsig")
    with pytest.raises(dispatch.MediaFetchError) as failed:
        dispatch.fetch_pod_photo(1, 1, url, "image/jpeg")
    assert "404" in str(failed.value)
    assert "s3cr3tsig" not in str(failed.value) and "MEgone" not in str(failed.value)
