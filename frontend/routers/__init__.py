"""One router per API."""
