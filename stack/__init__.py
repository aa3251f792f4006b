"""The stack launcher: model repository, a supervised tritonserver and the REST front end (``python -m stack``)."""
