"""HTTP routes of the OpenAI-compatible API."""
