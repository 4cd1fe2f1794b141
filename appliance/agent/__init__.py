"""What makes the model an agent: tools (Python, HTTP, MCP, built-in), guardrails, vision, behaviour hooks,
work that outlives a turn, and LLM tracing."""
