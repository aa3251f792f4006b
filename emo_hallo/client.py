"""``from emo_hallo.client import Hallo2Client``, as the Hallo2 document writes it: the SDK's client (``sdk``)."""

from sdk.clients import Hallo2Client, Hallo2Error

__all__ = ["Hallo2Client", "Hallo2Error"]
