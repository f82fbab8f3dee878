"""A bounded synthetic load on loopback: generate requests from simulated users, and
feedback from a simple judge, so a local canary has traffic to analyse."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from tasks.text import distinct_n

log = logging.getLogger(__name__)


def judge(text: str) -> str:
    """Synthetic thumbs: a non-empty, non-repetitive reply is 'up'. A stand-in for users,
    blind to which version answered."""
    return "up" if text.strip() and distinct_n([text], 1) >= 0.5 else "down"


@dataclass
class TrafficGenerator:
    url: str
    api_key: str
    prompts: Sequence[str]
    concurrency: int = 4
    users: int = 200
    max_new_tokens: int = 8
    feedback_share: float = 0.5
    max_requests: int = 100_000
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _worker(self, index: int) -> None:
        import requests

        rng = random.Random(self.seed * 1000 + index)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.api_key}"
        while not self._stop.is_set() and self.counts["requests"] < self.max_requests:
            body = {"prompt": rng.choice(self.prompts), "max_new_tokens": self.max_new_tokens,
                    "temperature": 0.8, "user": f"user-{rng.randrange(self.users)}"}
            try:
                reply = session.post(f"{self.url}/v1/generate", json=body, timeout=60)
            except requests.RequestException as exc:
                self._count("unreachable")
                log.warning("traffic: %s", exc)
                time.sleep(0.5)
                continue
            self._count("requests")
            self._count(f"status_{reply.status_code}")
            if reply.ok and rng.random() < self.feedback_share:
                answer = reply.json()
                posted = session.post(f"{self.url}/v1/feedback", timeout=60, json={
                    "request_id": answer["request_id"], "thumbs": judge(answer["text"])})
                self._count("feedback" if posted.ok else f"feedback_{posted.status_code}")

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def start(self) -> TrafficGenerator:
        self._threads = [threading.Thread(target=self._worker, args=(i,), daemon=True,
                                          name=f"traffic-{i}") for i in range(self.concurrency)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict[str, int]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=70)
        return dict(self.counts)
