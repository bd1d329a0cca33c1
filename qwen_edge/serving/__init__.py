"""Serving: the OpenAI-compatible HTTP API (`openai_api` parses and validates requests,
`server` owns the model and streams answers)."""
