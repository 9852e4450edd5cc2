"""The in-memory store behind `previous_response_id` and `GET`/`DELETE /v1/responses/{id}`.

Bounded two ways so that a long-running server cannot grow without end: at most `max_entries`
responses (the least recently stored or used goes first) and each one for `ttl_s` seconds after it
was stored. It lives in the server process: a restart forgets every response, and several server
processes do not share it. A response is stored only when its request says `store` (the default).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoreConfig:
    max_entries: int = 1024
    ttl_s: float = 3600.0


@dataclass(frozen=True)
class StoredResponse:
    response: dict  # the response object as GET returns it
    conversation: tuple[dict, ...]  # the input items it answered plus its output items, for the next turn
    expires_at: float


class ResponseStore:
    def __init__(self, config: StoreConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, response: dict, input_items: list[dict]) -> None:
        if self.config.max_entries <= 0:
            return
        conversation = (*input_items, *response["output"])
        self._entries[response["id"]] = StoredResponse(response, conversation, self._clock() + self.config.ttl_s)
        self._entries.move_to_end(response["id"])
        self._expire()
        while len(self._entries) > self.config.max_entries:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)  # in use: evicted last
        return entry

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._entries.pop(response_id, None) is not None

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, v in self._entries.items() if v.expires_at <= now]:
            del self._entries[key]
