"""Gemma 4's MTP drafter (`Gemma4AssistantForCausalLM`) converted into an engine's `assistant/` folder:
`--assistant auto|random|<folder>|<hub id>` resolved (sources), checked against the target and planned
(convert), and written beside the target's weights (engines/README.md, "The MTP drafter")."""
