"""The browser UI at ``/ui``: one hand-written page over the three REST APIs (see ``router.py``)."""
