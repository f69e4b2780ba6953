"""HTTP layer: routes, handlers and what observes them, request schemas, errors, OpenAPI."""
