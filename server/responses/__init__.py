"""The Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) over the chat logic.

A request's input items become chat messages (`items.py`), the chat path renders, tokenizes and runs
them on whichever backend serves (`server/chat.py`, `server/streams.py`), the Gemma 4 output parser
splits the text, and `assembler.py` turns its deltas into typed Responses events and output items.
`store.py` keeps finished responses (bounded in count and age) for `previous_response_id` and GET.
"""
