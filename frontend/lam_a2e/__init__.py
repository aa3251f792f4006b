"""LAM-A2E REST API (``lam-a2e-api.zh.md``): router, schemas and the REST session registry."""
