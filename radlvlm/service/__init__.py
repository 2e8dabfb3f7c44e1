"""The FastAPI service: drafts, error checks and de-identification over HTTP, with auth, audit and metrics."""
