"""The HTTP API (`dsm serve`): routes, OpenAPI schema, server start-up, idempotency keys."""
