"""The most queried domains, released only when many clients asked for them, and with noise: sans-I/O.

The seed's CC-DNS resolver offers "aggregate data" but nothing user-specific. A plain top-N of names leaks: a name
only one client asks for identifies that client's interest. So:

- **What is counted is clients, not queries.** For each domain (a name cut to its last `labels` labels,
  lowercased: `www.Example.COM.` -> `example.com`) the window keeps the set of distinct clients that asked, each as
  a keyed hash (HMAC-SHA-256 under a key made fresh for every window and never written out), up to `client_cap`
  of them (counts saturate there): one client adds at most 1 to a domain per window, however often it asks.
- **k-anonymity.** A domain is released only if at least `k` distinct clients asked for it in the window.
- **Noise.** Each released count is the number of distinct clients plus Laplace noise of scale 1/`epsilon`
  (one client changes a domain's count by at most 1, so this is epsilon-differentially private for that count);
  the threshold is applied to the noisy count, so the exact k boundary is not revealed. Counts are rounded, never
  below `k`.
- **Releases are per window.** Counts gather for `window_s`; at the end the top `top_n` are computed once and
  frozen, and the window starts again empty. Scraping more often shows the same release (differencing two scrapes
  a query apart reveals nothing).
- **Bounded memory.** At most `max_domains` domains per window, each with at most `client_cap` hashes of 16
  octets (about 140 MB at worst with the defaults, for 2,000 domains each asked by 1,000 clients in one window); a
  new domain past that replaces the one with the fewest clients (Space-Saving: heavy hitters survive, rare names
  are what gets lost, and rare names are never released).

Nothing here reads the clock or the system's randomness: callers pass `now`, and the noise comes from `uniform`
(secrets.SystemRandom().random in serve: an observer must not predict it).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from .errors import EnclaveIkeError


class TopDomainsError(EnclaveIkeError):
    exit_code = 2


@dataclass(frozen=True)
class TopDomainsConfig:
    """[metrics] top_*: what a release may contain."""

    enabled: bool = False
    top_n: int = 10
    k: int = 20
    epsilon: float = 1.0
    window_s: float = 3600.0
    labels: int = 2
    max_domains: int = 2_000
    client_cap: int = 1_000

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.k < 2 or self.epsilon <= 0 or self.window_s <= 0 or self.labels < 1 \
                or self.max_domains < self.top_n or self.client_cap < self.k:
            raise TopDomainsError(f"top domains: out of range: {self}")


@dataclass(frozen=True)
class Released:
    """One domain of a release: its name and its noisy count of distinct clients."""

    domain: str
    clients: int




def registered_part(name: str, labels: int) -> str | None:
    """The last `labels` labels of a DNS name, lowercased, without the root dot; None for the root."""
    parts = [part for part in name.rstrip(".").lower().split(".") if part]
    if not parts:
        return None
    return ".".join(parts[-labels:])


def laplace(scale: float, uniform: Callable[[], float]) -> float:
    """A Laplace(0, scale) sample from one uniform [0, 1) draw (inverse CDF)."""
    u = uniform() - 0.5
    return -scale * math.copysign(1.0, u) * math.log(max(1e-300, 1 - 2 * abs(u)))


class TopDomains:
    def __init__(self, config: TopDomainsConfig, now: float, uniform: Callable[[], float],
                 key: Callable[[int], bytes] = os.urandom) -> None:
        self.config, self._uniform, self._key_source = config, uniform, key
        self._start(now)
        self.release: tuple[Released, ...] = ()
        self.released_at: float | None = None

    def _start(self, now: float) -> None:
        self._window_end = now + self.config.window_s
        self._key = self._key_source(32)
        self._domains: dict[str, set[bytes]] = {}  # domain -> keyed hashes of its distinct clients

    def observe(self, name: str, client: bytes, now: float) -> None:
        """One query for `name` from `client` (its address, packed): counted once per client and domain."""
        self.tick(now)
        domain = registered_part(name, self.config.labels)
        if domain is None:
            return
        clients = self._domains.get(domain)
        if clients is None:
            if len(self._domains) >= self.config.max_domains:
                fewest = min(self._domains, key=lambda d: len(self._domains[d]))
                del self._domains[fewest]  # Space-Saving: the rarest goes
            clients = self._domains[domain] = set()
        if len(clients) < self.config.client_cap:
            clients.add(hmac.new(self._key, client, hashlib.sha256).digest()[:16])

    def tick(self, now: float) -> None:
        """End the window if its time is up: compute and freeze the release, start anew."""
        if now < self._window_end:
            return
        config = self.config
        noisy = []
        for domain, clients in self._domains.items():
            if len(clients) < config.k:
                continue  # fewer than k distinct clients: never released, noise or not
            count = len(clients) + laplace(1.0 / config.epsilon, self._uniform)
            if count >= config.k:
                noisy.append(Released(domain, max(config.k, round(count))))
        noisy.sort(key=lambda r: (-r.clients, r.domain))
        self.release, self.released_at = tuple(noisy[:config.top_n]), self._window_end
        self._start(now)
