"""Built-in prompt sets (JSON lines: id, category, prompt)."""
