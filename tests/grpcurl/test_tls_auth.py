"""grpcurl against a presenced with TLS, mTLS, a service key and HS256 JWTs:
the commands README.md's "Authentication" section shows, run for real."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from grpcurl_cli import TIMEOUT, Result, binary, parse_messages
from presenced_server import Presenced, start_presenced, stop_presenced

FIX = Path(__file__).resolve().parents[1] / "fixtures"
ISS, AUD = "https://idp.example", "presence"
SERVICE_SECRET = "svc_grpcurl_test_" + uuid.uuid4().hex


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_hs256(sub: str, secret: bytes, **claims: Any) -> str:
    """A test JWT, minted with nothing but the standard library."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = {"sub": sub, "iss": ISS, "aud": AUD, "exp": int(time.time()) + 600, **claims}
    payload = b64url(json.dumps(body).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Presenced]:
    digest = hashlib.sha256(SERVICE_SECRET.encode()).hexdigest()
    server = start_presenced(
        tmp_path_factory.mktemp("tls"),
        "--tls-cert", str(FIX / "server.pem"), "--tls-key", str(FIX / "server.key"),
        "--tls-client-ca", str(FIX / "ca.pem"),
        "--jwt-hs256-secret-file", str(FIX / "jwt-hs256.secret"),
        "--jwt-issuer", ISS, "--jwt-audience", AUD,
        "--service-key", f"backend={digest}",
    )
    yield server
    stop_presenced(server.proc)


def grpcurl(addr: str, *args: str, data: Any = None, cert: bool = False, bearer: str | None = None) -> Result:
    argv = ["-cacert", str(FIX / "ca.pem"), "-servername", "localhost"]
    if cert:
        argv += ["-cert", str(FIX / "client.pem"), "-key", str(FIX / "client.key")]
    if bearer:
        argv += ["-H", f"authorization: Bearer {bearer}"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [addr, *args]
    proc = subprocess.run([binary(), *argv], capture_output=True, text=True, timeout=TIMEOUT)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def hb(user: str) -> dict[str, Any]:
    return {"room_id": "tls-room", "user_id": user, "session_id": str(uuid.uuid4()), "interval": "30s"}


def test_tls_reflection_and_health(secured: Presenced) -> None:
    listed = grpcurl(secured.addr, "list").ok().stdout.split()
    assert "presence.v1.PresenceService" in listed
    health = grpcurl(secured.addr, "grpc.health.v1.Health/Check").ok()
    assert parse_messages(health.stdout) == [{"status": "SERVING"}]
    plain = subprocess.run([binary(), "-plaintext", secured.addr, "list"], capture_output=True, text=True, timeout=TIMEOUT)
    assert plain.returncode != 0, plain.stdout


def test_users_with_a_jwt_act_as_themselves(secured: Presenced) -> None:
    secret = (FIX / "jwt-hs256.secret").read_bytes().strip()
    alice = mint_hs256("alice", secret)
    tokens = grpcurl(secured.addr, "presence.v1.PresenceService/Heartbeat", data=hb("alice"), bearer=alice).message()
    assert set(tokens) == {"roomToken", "sessionToken"}
    grpcurl(secured.addr, "presence.v1.PresenceService/Heartbeat", data=hb("bob"), bearer=alice).failed_with(
        "PermissionDenied", "may not act as user")
    expired = mint_hs256("alice", secret, exp=int(time.time()) - 3600)
    grpcurl(secured.addr, "presence.v1.PresenceService/Heartbeat", data=hb("alice"), bearer=expired).failed_with(
        "Unauthenticated")
    grpcurl(secured.addr, "presence.v1.PresenceService/Heartbeat", data=hb("alice")).failed_with(
        "Unauthenticated", "missing credential")
    # The room token alone reads the room.
    snapshot = grpcurl(secured.addr, "presence.v1.PresenceService/List",
                       data={"room_token": tokens["roomToken"]}).message()["snapshot"]
    assert any(u["userId"] == "alice" for u in snapshot["users"])


def test_services_by_key_or_by_client_certificate(secured: Presenced) -> None:
    by_key = grpcurl(secured.addr, "presence.v1.PresenceService/ListRoom", data={"room_id": "tls-room"},
                     bearer=SERVICE_SECRET).message()
    assert by_key["snapshot"]["roomId"] == "tls-room"
    by_cert = grpcurl(secured.addr, "presence.v1.PresenceService/ListRoom", data={"room_id": "tls-room"},
                      cert=True).message()
    assert by_cert["snapshot"]["roomId"] == "tls-room"
    grpcurl(secured.addr, "presence.v1.PresenceService/Heartbeat", data=hb("anyone"), cert=True).ok()
    secret = (FIX / "jwt-hs256.secret").read_bytes().strip()
    grpcurl(secured.addr, "presence.v1.PresenceService/ListRoom", data={"room_id": "tls-room"},
            bearer=mint_hs256("alice", secret)).failed_with("PermissionDenied", "is for services")
