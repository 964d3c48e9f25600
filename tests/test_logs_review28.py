"""Reviewer r6: what the service writes to its logs, metrics and error answers.

The rule (README, Deployment; STYLE, Config, errors, logs): JSON log lines, phone numbers
masked, and never an OTP, a token or a payment payload. Each test drives a real path,
captures the lines as the service writes them (core.logs.JsonFormatter on the root
logger) and fails on the code as reviewed.
"""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator

import pytest

from core.logs import JsonFormatter

pytestmark = pytest.mark.db


class _Lines(logging.Handler):
    """The log lines as the service's handler writes them (JSON, masked)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    root = logging.getLogger()
    handler, level = _Lines(), root.level
    root.addHandler(handler)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


# --- 1. a failed job's arguments go to the log ---------------------------------------------

def test_a_refused_razorpay_delivery_does_not_log_the_payment_payload(live, logged,
                                                                      monkeypatch):
    """README: "payment payloads are never logged" (core/adapters/razorpay_gateway.py: they
    carry customer contacts), and core/cli.py builds the workers with
    log_job_description=False so that "a job's arguments ... must not reach the logs". But
    RQ's Worker.handle_exception logs every failed try with extra={"arguments": job.args},
    and JsonFormatter writes every extra field out: a Razorpay delivery the service
    refused (a 403, a 503 while it is busy) logs its whole body, the payment link's URL and
    the payer's name with it, at every retry (the same holds for any job whose arguments
    are not ids: a rider's POD photo URL, the IVR's spoken texts)."""
    from rq.serializers import JSONSerializer

    from core.adapters import razorpay_gateway
    from core.adapters.queue import SANDBOX_QUEUE, JobLoggingSimpleWorker, queue
    from core.adapters.redis_conn import redis_client
    from tests.test_payments_support import confirmed_booking, link_of, pay, run

    booking_id = confirmed_booking("+919812340061")  # the customer is "Sita"
    run()  # the payment link is made at the emulator
    link = link_of(booking_id)
    # The service refuses the deliveries now (a webhook secret rotated without keeping the
    # old one; the same answer as a 503 while the database is busy): Razorpay retries.
    monkeypatch.setattr(razorpay_gateway, "verify_webhook", lambda body, signature: False)
    assert pay(booking_id).status_code == 200
    # The emulators' worker as `./run sandbox-worker` builds it (core.cli.sandbox_worker).
    worker = JobLoggingSimpleWorker([queue(SANDBOX_QUEUE)], connection=redis_client(),
                                    serializer=JSONSerializer, log_job_description=False)
    worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
    text = "\n".join(logged)
    assert "deliver_webhook" in text  # the refused delivery was logged, as it should be
    assert link.short_url not in text, "a payment link's URL in the log"
    assert "Sita" not in text, "the payer's name in the log"
    assert "payment_link.paid" not in text, "a Razorpay payload in the log"


# --- 2. LOG_LEVEL=DEBUG logs the photo store's request signatures -------------------------

class _FakeS3(http.server.BaseHTTPRequestHandler):
    """An S3-compatible endpoint that takes any object (R2, MinIO as far as a PUT goes)."""

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_s3() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def test_at_debug_level_the_photo_stores_credentials_and_signatures_are_not_logged(
        tmp_path, logged, fake_s3):
    """LOG_LEVEL=DEBUG is a documented level (README, Configuration), the one an operator
    turns on to see why something fails. core.logs.configure quiets the libraries "that
    could echo URLs with phone numbers or auth" (twilio.http_client, urllib3, werkzeug),
    but not boto3's: with POD_STORAGE=s3 every proof-of-delivery photo stored (or read
    for an operator) logs its signed request, botocore.endpoint's "Sending http request"
    with the Authorization header (the access key id and the request's SigV4 signature)
    and botocore.auth's canonical request and signature: credentials in the logs."""
    from core import logs
    from core.adapters import storage

    logs.configure("DEBUG")  # LOG_LEVEL=DEBUG, as create_app and the CLI apply it
    key_id = "AKIAREVSIXPODSTORE01"
    cfg = storage.load_config({
        "POD_STORAGE": "s3", "POD_S3_BUCKET": "pods", "POD_S3_ENDPOINT_URL": fake_s3,
        "POD_S3_ACCESS_KEY_ID": key_id,
        "POD_S3_SECRET_ACCESS_KEY": "rev6-pod-store-secret-access-key-0001"},
        data_dir=tmp_path)
    store = storage.build_store(cfg)
    photo = b"\xff\xd8\xff\xe0" + b"\x00" * 64  # a JPEG's first bytes: a photo to save_photo
    saved = storage.save_photo(photo, folder="12345678/leg-1", store=store)
    assert saved.uri.startswith("s3://pods/")  # stored through boto3, signed and sent
    text = "\n".join(logged)
    assert key_id not in text, "the S3 access key id is in the log"
    assert "Signature=" not in text and "Signature:" not in text, \
        "a SigV4 request signature is in the log"
