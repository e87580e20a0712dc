"""hookyard-webhook: a destination that POSTs events to any URL, signed with HMAC-SHA256."""

from .plugin import WebhookSettings, sign, verify

__all__ = ["WebhookSettings", "sign", "verify"]
