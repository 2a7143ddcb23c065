"""The spec language: safe YAML loading, the pydantic schema, and validation to a level graph."""
