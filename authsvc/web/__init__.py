"""HTTP layer: routes, handlers, middleware, request schemas, errors, OpenAPI."""
