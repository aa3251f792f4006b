"""FastAPI front end: the documented REST APIs translated into Triton requests."""
