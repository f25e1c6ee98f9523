"""What goes wrong at the fake exchange, and when; the counters a test reads.

Two kinds of schedule, both switchable at runtime (0 turns a fault off):

- **Count-based** (deterministic): faults keyed on counts, never on time, so that the same seed
  and options hit the same frames, connections and requests in every run, however fast the
  machine. A connection is dropped once it has sent `drop_after_frames` data frames (the first
  `drop_connections` connections only, or all); a stall starts after every `stall_every_frames`
  data frames the server has sent (or once, after `stall_once_after_frames`); the first
  `refuse_handshakes` WebSocket handshakes are refused. Malformed frames are chosen per stream
  (one channel on one connection) by the frame's index in it: an exact `malformed_fraction` of
  its frames, at a phase drawn from the seed, each a kind in a cycle that starts where the seed
  says (`MalformedStream`). REST errors hit an exact `rest_error_fraction` of the requests, in
  the order they come, cycling through `REST_ERROR_KINDS`. Tests use these.
- **Per connection, by its age** (deterministic in the connection's own time): `drop_after_s`
  closes each connection that many seconds after it was accepted, whatever it sent or received;
  every connection lives exactly that long (a flapping server). Which data frames fall before the
  drop depends on timing, so it is logged without a frame count; what a test asserts on is the
  connections' lifetimes and the client's reconnects (`FakeStats.ws_log`).
- **Time-based** (wall clock): `drop_every_s`, `stall_every_s`, `stall_once_after_s`,
  `refuse_handshakes_for_s`. Which frames they hit depends on timing: fine to run by hand,
  flaky to assert on.

A stall holds every socket, or with `stall_symbol` only that symbol's pushes (a per-symbol stall:
its data stops while the other symbols' flows). The stall length (`stall_for_s`), `latency_ms`
and the REST rate limit are durations by nature.
`FakeStats.faults_log` lists every scheduled fault in count terms only (which connection, which
frame of it, which request), so that two runs can be compared: equal for count-based schedules.
`FakeStats.ws_log` is the server's own record of each WebSocket connection (`WsRecord`: when it
was accepted, sent its first and last data frame, closed; the client's messages on it and the most
in any one second), the reference a test measures a client's downtime and send rate against.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

MALFORMED_KINDS = (
    "not_json",
    "truncated",
    "missing_field",
    "wrong_type",
    "nan",
    "inf",
    "zero_price",
    "negative_size",
    "crossed_book",
    "ts_backwards",
    "price_jump",
    "unknown_channel",
    "wrong_symbol",
    "huge",
)
REST_ERROR_KINDS = ("http_500", "http_503", "network_error")


@attrs.define
class Faults:
    """What goes wrong, switchable at runtime. 0 turns a fault off. See the module docstring."""

    # time-based: at moments of the server's clock
    drop_every_s: float = 0  # close every WS connection abruptly (no close frame) every N s
    stall_every_s: float = 0  # every N s, send nothing at all on any WS for stall_for_s
    stall_for_s: float = 0  # how long any stall lasts (time- or count-triggered)
    stall_once_after_s: float = 0  # one stall (of stall_for_s) N s after the server starts
    malformed_fraction: float = 0  # fraction of WS data frames replaced by a malformed one (by count)
    refuse_handshakes_for_s: float = 0  # HTTP 503 to WS handshakes for the first N s
    rest_error_fraction: float = 0  # fraction of REST replies that are errors (500, 503, code 10001)
    rest_rate_limit_per_s: float = 10  # over this in any 1 s (per server): code 10005/10006
    rest_rate_limited_first: int = 0  # the first N REST requests get code 10005 (count-based)
    # the first N kline rows the REST klines serve are garbled: a high under the low (count-based)
    rest_bad_kline_rows: int = 0
    # the kline endpoint's `endTime` taken as exclusive (a candle opening at it is left out): the
    # docs leave the reading open; the client must page right under either
    rest_kline_end_exclusive: bool = False
    # trading_pairs refuses a call asking for a symbol it does not serve (code 20015) instead of
    # leaving its row out: the docs saw 20015 for an unknown symbol, not what a list of them gets
    rest_unknown_symbol_refused: bool = False
    latency_ms: float = 0  # added before every WS push and REST reply
    # count-based: at the same frame, connection or handshake in every run
    drop_after_frames: int = 0  # close a WS connection abruptly once it has sent N data frames
    drop_connections: int = 0  # drop_after_frames applies to the first N connections only (0: all)
    stall_every_frames: int = 0  # a stall of stall_for_s after every N data frames sent (all sockets)
    stall_once_after_frames: int = 0  # one stall of stall_for_s after the N-th data frame sent
    refuse_handshakes: int = 0  # HTTP 503 to the first N WS handshakes
    # per connection: close each WS connection abruptly N s after it was accepted (a connection
    # accepted while it is 0 lives on)
    drop_after_s: float = 0
    # where a stall (time- or count-triggered) hits: "" every socket (nothing at all is sent, not
    # even pongs); a symbol: only that symbol's pushes stop, the socket and the other symbols go on
    stall_symbol: str = ""
    # this symbol's kline pushes never come (its book, ticker and price pushes do; REST serves
    # its klines): a kline stream dead while the rest of the symbol's data flows
    klines_silent_symbol: str = ""
    # this symbol's book pushes (depth_book*) never come (its klines, ticker and price pushes do;
    # REST serves its depth): a book stream dead while the rest of the symbol's data flows
    book_silent_symbol: str = ""
    # the protocol doc's uncertain readings, for a client to be tested under both: each channel
    # subscribed is acknowledged with {"op":"subscribe","ch":..,"data":{"result":true}} (one
    # third-party text claims so; the captures saw no ack); a rate-limit reply comes with this HTTP
    # status (the exchange's: 200 with code 10005/10006; the doc says to handle 429 and 503 too;
    # the body stays the code's envelope)
    subscribe_ack: bool = False
    rest_rate_limit_status: int = 200
    # a rate-limit reply carries `Retry-After: <this>` ("": none, the exchange's as seen; the doc
    # says to handle 429/503, which may come with one): whole seconds or an HTTP date, as given
    rest_retry_after: str = ""


@attrs.define
class WsRecord:
    """One accepted WebSocket connection, as the server saw it; times are trio's clock (the
    server's run), None for what has not happened (yet)."""

    number: int  # 1 for the first connection accepted
    opened_at: float
    first_data_at: float | None = None  # its first data frame written
    last_data_at: float | None = None
    closed_at: float | None = None
    data_frames: int = 0
    client_msgs: int = 0  # messages the client sent on it (pings, subscribes, anything)
    client_msgs_max_per_s: int = 0  # the most of them in any 1 s window

    def data_span(self, start: float = -math.inf, end: float = math.inf) -> float:
        """Seconds of [start, end] from its first data frame to its close (or `end`): the time
        the client was served data on it."""
        if self.first_data_at is None:
            return 0.0
        closed = self.closed_at if self.closed_at is not None else end
        return max(0.0, min(closed, end) - max(self.first_data_at, start))


@attrs.define
class FakeStats:
    """Counters a test can read."""

    connections: int = 0
    handshakes: int = 0  # WebSocket handshakes received (refused or not)
    handshakes_refused: int = 0
    drops: int = 0
    stalls: int = 0
    protocol_ping_kills: int = 0
    pings_received: int = 0
    pongs_sent: int = 0
    subscriptions: list[Any] = attrs.field(factory=list)  # every arg of every subscribe message
    subscribe_msgs: int = 0  # subscribe messages received (one may carry several symbols' args)
    subscribe_acks: int = 0  # acknowledgements sent (`Faults.subscribe_ack`)
    ignored_client_msgs: int = 0
    client_msgs_max_per_s: int = 0  # the most client messages on one socket in any 1 s window
    rate_disconnects: int = 0
    idle_disconnects: int = 0
    rest_requests: int = 0
    rest_rate_limited: int = 0
    rest_errors: int = 0
    rest_bad_kline_rows: int = 0  # kline rows served garbled (`Faults.rest_bad_kline_rows`)
    internal_errors: int = 0
    data_frames_sent: int = 0  # on every socket, malformed ones included
    malformed_sent: Counter[str] = attrs.field(factory=Counter)
    frames_sent: Counter[str] = attrs.field(factory=Counter)
    # every scheduled fault, in count terms only, in the order they happened:
    # ("refuse", handshake no.), ("drop", connection no., data frames it sent),
    # ("stall", data frames sent in all[, the stall_symbol]),
    # ("malformed", connection no., channel, frame index, kind),
    # ("rest_error", request no., kind), ("drop_after_s", connection no.),
    # ("bad_kline_row", request no., the row's open time ms)
    faults_log: list[tuple[Any, ...]] = attrs.field(factory=list)
    ws_log: list[WsRecord] = attrs.field(factory=list)  # every WebSocket connection accepted, in order
    # every REST request that reached a route (past the rate limit and error faults): path, params
    rest_log: list[tuple[str, dict[str, str]]] = attrs.field(factory=list)


class MalformedStream:
    """Which data frames of one stream (a channel on a connection) are malformed, and how.

    Frame i of the stream (0-based, counting the frames that may be malformed) is replaced when
    `floor((i + 1) * f + phase) > floor(i * f + phase)`: an exact fraction f of the frames, evenly
    spread, at a phase drawn from (seed, connection, channel). The kinds follow MALFORMED_KINDS in
    a cycle from a seeded start, skipping kinds that do not fit the frame.
    """

    def __init__(self, seed: int, conn_no: int, ch: str) -> None:
        rng = random.Random(f"{seed}:malformed:{conn_no}:{ch}")
        self.phase = rng.random()
        self.next_kind = rng.randrange(len(MALFORMED_KINDS))
        self.index = 0

    def next(self, fraction: float, applicable: Callable[[str], bool]) -> tuple[int, str | None]:
        """(this frame's index, the malformed kind that replaces it or None)."""
        i = self.index
        self.index += 1
        f = min(max(fraction, 0.0), 1.0)
        if f <= 0 or _steps(i * f + self.phase) == _steps((i + 1) * f + self.phase):
            return i, None
        n = len(MALFORMED_KINDS)
        for k in range(n):
            kind = MALFORMED_KINDS[(self.next_kind + k) % n]
            if applicable(kind):
                self.next_kind = (self.next_kind + k + 1) % n
                return i, kind
        return i, None


class RestErrors:
    """An exact fraction of the REST requests fail, in arrival order: request k (1-based) fails when
    `floor(k * f)` steps up (with f = 0.5: the 2nd, 4th, ...); the failures cycle through
    REST_ERROR_KINDS."""

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0

    def next(self, fraction: float) -> str | None:
        k = self.requests = self.requests + 1
        f = min(max(fraction, 0.0), 1.0)
        if f <= 0 or _steps((k - 1) * f) == _steps(k * f):
            return None
        kind = REST_ERROR_KINDS[self.failed % len(REST_ERROR_KINDS)]
        self.failed += 1
        return kind


def _steps(x: float) -> int:
    """floor(x), forgiving the float error of a product like 10 * 0.3 = 2.9999999999999996."""
    return math.floor(x + 1e-9)
