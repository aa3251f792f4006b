"""The Hallo2 document's client package: ``from emo_hallo.client import Hallo2Client`` (the SDK's client, ``sdk``)."""
