"""HTTP handlers: thin functions that validate, call the logic modules, and pick the response type."""
