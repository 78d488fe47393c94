"""NATS decentralized auth for the tests: an operator, an account with JetStream, a user, the
server settings that trust them and the user's credentials file (what ``nsc`` makes), signed
here with ``nkeys`` so that ``--store-creds`` is tested against a real ``nats-server``."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys


def _key(prefix: int) -> Any:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: Any, subject: str, name: str, nats: dict[str, Any]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    claims = {"jti": _b64(os.urandom(16)), "iat": int(time.time()), "name": name,
              "iss": issuer.public_key.decode(), "sub": subject, "nats": nats}  # fmt: skip
    body = _b64(json.dumps(claims).encode())
    return f"{header}.{body}.{_b64(issuer.sign(f'{header}.{body}'.encode()))}"


def operator_setup(directory: Path) -> tuple[str, Path]:
    """(the server settings trusting a new operator and its one account, the credentials
    file of a user of that account)."""
    operator, account = _key(nkeys.PREFIX_BYTE_OPERATOR), _key(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _key(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(operator, operator.public_key.decode(), "op",
                        {"type": "operator", "version": 2})  # fmt: skip
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1, "mem_storage": -1,
                 "disk_storage": -1, "streams": -1, "consumer": -1}  # fmt: skip
    account_pub = account.public_key.decode()
    account_jwt = _jwt(operator, account_pub, "audio",
                       {"limits": unlimited, "type": "account", "version": 2})  # fmt: skip
    user_jwt = _jwt(account, user.public_key.decode(), "svc",
                    {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                     "type": "user", "version": 2})  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    creds = directory / "svc.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    system = _key(nkeys.PREFIX_BYTE_ACCOUNT)  # the server's own account (JetStream needs it)
    system_pub = system.public_key.decode()
    system_jwt = _jwt(operator, system_pub, "SYS", {"type": "account", "version": 2})
    settings = (f"operator: {operator_jwt}\nsystem_account: {system_pub}\nresolver: MEMORY\n"
                f"resolver_preload: {{\n  {account_pub}: {account_jwt}\n"
                f"  {system_pub}: {system_jwt}\n}}\n")  # fmt: skip
    return settings, creds
