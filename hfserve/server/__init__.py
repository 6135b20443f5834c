"""The Starlette app: routes, middleware, errors and schemas of the OpenAI-compatible API."""
