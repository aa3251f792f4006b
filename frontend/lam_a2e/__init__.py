"""LAM-A2E REST API (``lam-a2e-api.zh.md``): router, schemas, engine (Triton calls) and the REST session registry."""
