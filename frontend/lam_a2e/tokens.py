"""Signed session ids: which Triton replica holds a streaming session's sequence, and its correlation id.

A session id is ``base64url(version | replica tag | correlation id | nonce | HMAC-SHA256 over the rest, 16 bytes)``:
any front end that has the same key reads it without asking anyone, and a forged or altered id fails the HMAC
check (a 404, never another session's stream). The replica tag is a keyed digest of the replica's address, so the
id names no host; the nonce makes every id unique even if a correlation id came back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

VERSION = 1
_PAYLOAD = struct.Struct(">B8sQ8s")  # version, replica tag, correlation id, nonce
_MAC_BYTES = 16


@dataclass(frozen=True)
class SessionRef:
    replica_tag: bytes
    correlation_id: int


class SessionTokens:
    def __init__(self, key: bytes | None = None):
        """``key`` None: a random one for this process (sessions then live and die with this front end)."""
        self.ephemeral = not key
        self._key = key or secrets.token_bytes(32)

    def replica_tag(self, address: str) -> bytes:
        return hmac.new(self._key, b"replica:" + address.encode(), hashlib.sha256).digest()[:8]

    def issue(self, replica_tag: bytes, correlation_id: int) -> str:
        payload = _PAYLOAD.pack(VERSION, replica_tag, correlation_id, secrets.token_bytes(8))
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def read(self, session_id: str) -> SessionRef | None:
        """The session an id names; None for anything this key did not sign."""
        try:
            raw = base64.urlsafe_b64decode(session_id + "=" * (-len(session_id) % 4))
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:_PAYLOAD.size], raw[_PAYLOAD.size:]
        if len(raw) != _PAYLOAD.size + _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        version, tag, correlation_id, _ = _PAYLOAD.unpack(payload)
        return SessionRef(tag, correlation_id) if version == VERSION else None

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]
