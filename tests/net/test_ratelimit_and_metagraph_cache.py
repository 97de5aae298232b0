"""Token buckets and the axon's metagraph cache when the chain fails."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp

from prism.chain.auth import sign_request
from prism.chain.errors import ChainUnavailable
from prism.chain.local import LocalChain
from prism.chain.wallets import hotkey_ss58
from prism.net.axon import Axon, AxonConfig
from prism.net.dendrite import Dendrite, DendriteConfig
from prism.net.protocol import INFO_PATH
from prism.net.ratelimit import TokenBucketLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_bursts_then_refills_per_key() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.retry_after_s("a") == 0.5
    assert limiter.allow("b")  # another key has its own bucket
    clock.now += 0.5
    assert limiter.allow("a") and not limiter.allow("a")
    clock.now += 10.0
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_token_bucket_forgets_idle_keys() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=1, clock=clock, max_keys=10)
    for i in range(10):
        limiter.allow(f"k{i}")
    clock.now += 5.0
    limiter.allow("new")
    assert len(limiter._buckets) == 1


class FlakyChain:
    """A real LocalChain whose metagraph read can be switched to fail like an unreachable node."""

    def __init__(self, inner: LocalChain) -> None:
        self.inner = inner
        self.netuid = inner.netuid
        self.down = False
        self.reads = 0

    def metagraph(self) -> Any:
        self.reads += 1
        if self.down:
            raise ChainUnavailable("node unreachable (injected)")
        return self.inner.metagraph()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_axon_keeps_its_last_metagraph_when_the_chain_fails(chain, wallets, net) -> None:
    data = net.make_zip("kept\n")
    sha = hashlib.sha256(data).hexdigest()
    flaky = FlakyChain(chain)

    async def scenario() -> None:
        axon = Axon(
            wallets["miner"], flaky, AxonConfig(host="127.0.0.1", port=0, metagraph_min_refresh_s=0.0)
        )
        axon.set_submission(data)
        await axon.start()
        chain.serve_axon(wallets["miner"], "127.0.0.1", axon.port)
        neuron = net.neuron_of(chain, wallets["miner"])
        try:
            flaky.down = True
            # The stranger is unknown, so the axon tries a refresh, which fails: still refused, still up.
            async with Dendrite(wallets["stranger"], DendriteConfig(retries=0)) as dendrite:
                refused = await dendrite.fetch_submission(neuron, sha)
            assert refused.http_status == 401 and flaky.reads >= 2
            async with Dendrite(wallets["validator"], DendriteConfig(retries=0)) as dendrite:
                assert (await dendrite.fetch_submission(neuron, sha)).ok
        finally:
            await axon.stop()

    net.run(scenario())


def test_axon_without_any_metagraph_answers_503(chain, wallets, net) -> None:
    flaky = FlakyChain(chain)
    flaky.down = True

    async def scenario() -> None:
        axon = Axon(wallets["miner"], flaky, AxonConfig(host="127.0.0.1", port=0))
        axon.set_submission(net.make_zip("x\n"))
        await axon.start()
        try:
            headers = sign_request(
                wallets["validator"],
                method="GET",
                path=INFO_PATH,
                body=b"",
                receiver_hotkey=hotkey_ss58(wallets["miner"]),
            )
            url = f"http://127.0.0.1:{axon.port}{INFO_PATH}"
            async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
                body = await response.json()
            assert response.status == 503 and body["error"]["code"] == "axon.metagraph_unavailable"
        finally:
            await axon.stop()

    asyncio.run(scenario())
