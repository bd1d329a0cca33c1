"""Generation: from text to tokens and back, on any backend.

`tokenizer`, `chat_template` (messages to prompt ids) and its inverse `chat_output` (answer text
to content, reasoning and tool calls), `settings` (what a generation can be asked for),
`sampling` (the sampler), `loop` (generate_step → stream_generate → generate) and `llm` (the
`load` / `LLM` facade every front end uses).
"""
