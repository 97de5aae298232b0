"""Axon and dendrite over real HTTP on 127.0.0.1 with real wallets and a real LocalChain."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from prism.chain.auth import sign_request
from prism.chain.base import AxonInfo, Neuron
from prism.chain.commitments import format_commitment, parse_commitment
from prism.chain.wallets import hotkey_ss58
from prism.net.dendrite import Dendrite, DendriteConfig, FetchStatus
from prism.net.protocol import HEADER_SHA256, INFO_PATH, SUBMISSION_PATH

FAST = DendriteConfig(timeout_s=2.0, connect_timeout_s=1.0, retries=1, backoff_s=0.05)


async def signed_get(
    url: str,
    wallet: Any,
    receiver: str,
    *,
    path: str = SUBMISSION_PATH,
    signed_body: bytes = b"",
    sent_body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any] | bytes]:
    """One hand-built request, so each test can break exactly one thing."""
    headers = headers or sign_request(
        wallet, method="GET", path=path, body=signed_body, receiver_hotkey=receiver
    )
    async with aiohttp.ClientSession() as session:
        body = signed_body if sent_body is None else sent_body
        async with session.get(url + path, headers=headers, data=body or None) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()


def test_registered_validator_fetches_zip_matching_commitment(chain, wallets, net) -> None:
    data = net.make_zip("def build_model(ctx): ...\n")
    sha = hashlib.sha256(data).hexdigest()
    chain.commit(wallets["miner"], format_commitment(sha))

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data) as axon:
            axon.set_committed(sha)
            neuron = net.neuron_of(chain, wallets["miner"])
            committed = parse_commitment(chain.commitments()[neuron.hotkey].data)
            assert committed.sha256 == sha
            async with Dendrite(wallets["validator"], FAST) as dendrite:
                result = await dendrite.fetch_submission(neuron, committed.sha256)
                info = await dendrite.fetch_info(neuron)
            assert result.status is FetchStatus.OK, result.message
            assert result.data == data and result.sha256 == sha and result.fault is None
            assert info is not None
            assert info.hotkey == neuron.hotkey
            assert info.committed_sha256 == sha and info.served_sha256 == sha
            assert info.protocol == "prism/1"

    net.run(scenario())


def _refusal_cases(wallets: dict[str, Any], miner_hotkey: str) -> dict[str, dict[str, Any]]:
    validator = wallets["validator"]
    good = sign_request(validator, method="GET", path=SUBMISSION_PATH, body=b"", receiver_hotkey=miner_hotkey)
    return {
        "unregistered": {"wallet": wallets["stranger"], "expect": (401, "authz.unregistered")},
        "non_validator": {"wallet": wallets["weak"], "expect": (403, "authz.not_validator")},
        "tampered_body": {
            "wallet": validator,
            "signed_body": b"{}",
            "sent_body": b'{"x":1}',
            "expect": (401, "auth.bad_signature"),
        },
        "tampered_path": {
            "wallet": validator,
            "headers": good,
            "path": INFO_PATH,
            "expect": (401, "auth.bad_signature"),
        },
        "wrong_receiver": {
            "wallet": validator,
            "receiver": hotkey_ss58(wallets["miner2"]),
            "expect": (401, "auth.wrong_receiver"),
        },
        "unsigned": {"wallet": validator, "headers": {"X-Other": "1"}, "expect": (401, "auth.malformed")},
        "stale": {
            "wallet": validator,
            "headers": sign_request(
                validator,
                method="GET",
                path=SUBMISSION_PATH,
                body=b"",
                receiver_hotkey=miner_hotkey,
                nonce_ns=time.time_ns() - 60 * 10**9,
            ),
            "expect": (401, "auth.stale"),
        },
        "oversized": {
            "wallet": validator,
            "signed_body": b"x" * 20_000,
            "expect": (413, "request.too_large"),
        },
    }


@pytest.mark.parametrize(
    "case",
    [
        "unregistered",
        "non_validator",
        "tampered_body",
        "tampered_path",
        "wrong_receiver",
        "unsigned",
        "oversized",
    ],
)
def test_bad_request_is_refused_and_axon_keeps_serving(case: str, chain, wallets, net) -> None:
    data = net.make_zip("x = 1\n")
    sha = hashlib.sha256(data).hexdigest()
    miner_hotkey = hotkey_ss58(wallets["miner"])
    spec = _refusal_cases(wallets, miner_hotkey)[case]

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data, max_request_bytes=4096) as axon:
            url = f"http://127.0.0.1:{axon.port}"
            status, body = await signed_get(
                url,
                spec["wallet"],
                spec.get("receiver", miner_hotkey),
                path=spec.get("path", SUBMISSION_PATH),
                signed_body=spec.get("signed_body", b""),
                sent_body=spec.get("sent_body"),
                headers=spec.get("headers"),
            )
            assert (status, body["error"]["code"]) == spec["expect"], body
            assert body["protocol"] == "prism/1"
            async with Dendrite(wallets["validator"], FAST) as dendrite:
                result = await dendrite.fetch_submission(net.neuron_of(chain, wallets["miner"]), sha)
            assert result.ok, result.message

    net.run(scenario())


def test_replayed_request_is_refused(chain, wallets, net) -> None:
    data = net.make_zip("x = 2\n")
    miner_hotkey = hotkey_ss58(wallets["miner"])

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data) as axon:
            url = f"http://127.0.0.1:{axon.port}"
            headers = sign_request(
                wallets["validator"],
                method="GET",
                path=SUBMISSION_PATH,
                body=b"",
                receiver_hotkey=miner_hotkey,
            )
            first_status, first_body = await signed_get(url, None, miner_hotkey, headers=headers)
            assert first_status == 200 and first_body == data
            second_status, second_body = await signed_get(url, None, miner_hotkey, headers=headers)
            assert second_status == 409 and second_body["error"]["code"] == "auth.replayed"
            third_status, _ = await signed_get(url, wallets["validator"], miner_hotkey)
            assert third_status == 200

    net.run(scenario())


def test_flood_beyond_rate_limit_gets_429_then_recovers(chain, wallets, net) -> None:
    data = net.make_zip("x = 3\n")
    miner_hotkey = hotkey_ss58(wallets["miner"])

    async def scenario() -> None:
        # A burst of 3 requests, refilled at 2 per second.
        chain.register_wallet(wallets["stranger"], stake=10.0, validator_permit=True)
        async with net.running_axon(
            wallets["miner"],
            chain,
            data,
            rate_limit_burst=3,
            rate_limit_per_min=120.0,
            metagraph_min_refresh_s=0.0,
        ) as axon:
            url = f"http://127.0.0.1:{axon.port}"
            answers = [
                await signed_get(url, wallets["validator"], miner_hotkey, path=INFO_PATH) for _ in range(6)
            ]
            statuses = [status for status, _ in answers]
            assert statuses[:3] == [200, 200, 200]
            assert statuses[3:] == [429, 429, 429]
            assert answers[-1][1]["error"]["code"] == "rate.limited"
            # The bucket is per hotkey: another validator is not throttled by the first one's flood.
            assert (await signed_get(url, wallets["stranger"], miner_hotkey, path=INFO_PATH))[0] == 200
            # Refilled after a while, and the submission is still served.
            await asyncio.sleep(0.6)
            status, body = await signed_get(url, wallets["validator"], miner_hotkey)
            assert status == 200 and body == data
            assert axon.stats["rate.limited"] == 3

    net.run(scenario())


def test_min_stake_admits_a_caller_without_permit(chain, wallets, net) -> None:
    data = net.make_zip("x = 4\n")
    sha = hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data, min_validator_stake=50.0):
            async with Dendrite(wallets["weak"], FAST) as dendrite:
                result = await dendrite.fetch_submission(net.neuron_of(chain, wallets["miner"]), sha)
            assert result.ok

    net.run(scenario())


def test_validator_registered_after_start_is_served(chain, wallets, net) -> None:
    data = net.make_zip("x = 5\n")
    sha = hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data, metagraph_min_refresh_s=0.0):
            # "stranger" becomes a validator while the axon is up; its first call triggers a refresh.
            chain.register_wallet(wallets["stranger"], stake=10.0, validator_permit=True)
            async with Dendrite(wallets["stranger"], FAST) as dendrite:
                result = await dendrite.fetch_submission(net.neuron_of(chain, wallets["miner"]), sha)
            assert result.ok, result.message

    net.run(scenario())


def test_miner_serving_other_bytes_than_committed_is_a_miner_fault(chain, wallets, net) -> None:
    committed = hashlib.sha256(net.make_zip("the committed one\n")).hexdigest()
    served = net.make_zip("something else\n")

    async def lying_miner(request: web.Request) -> web.Response:
        # Ignores the requested hash and serves other bytes with a 200.
        return web.Response(body=served, content_type="application/zip", headers={HEADER_SHA256: committed})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get(SUBMISSION_PATH, lying_miner)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        neuron = net.neuron_of(chain, wallets["miner"]).model_copy(
            update={"axon": AxonInfo(ip="127.0.0.1", port=port)}
        )
        try:
            async with Dendrite(wallets["validator"], FAST) as dendrite:
                result = await dendrite.fetch_submission(neuron, committed)
        finally:
            await runner.cleanup()
        assert result.status is FetchStatus.HASH_MISMATCH
        assert result.code == "net.hash_mismatch" and result.fault == "miner" and result.is_miner_fault
        assert result.sha256 == hashlib.sha256(served).hexdigest()
        assert result.data is None  # never hand unverified bytes onward
        assert result.attempts == 1  # a miner fault is not retried

    net.run(scenario())


def test_stale_commitment_is_not_served_and_retryable(chain, wallets, net) -> None:
    current = net.make_zip("current\n")
    old_sha = hashlib.sha256(net.make_zip("old\n")).hexdigest()

    async def scenario() -> None:
        async with (
            net.running_axon(wallets["miner"], chain, current),
            Dendrite(wallets["validator"], FAST) as dendrite,
        ):
            result = await dendrite.fetch_submission(net.neuron_of(chain, wallets["miner"]), old_sha)
        assert result.status is FetchStatus.NOT_SERVED and result.http_status == 404
        assert result.retryable and not result.is_miner_fault

    net.run(scenario())


def test_nothing_served_is_404(chain, wallets, net) -> None:
    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, None) as axon:
            status, body = await signed_get(
                f"http://127.0.0.1:{axon.port}", wallets["validator"], hotkey_ss58(wallets["miner"])
            )
        assert status == 404 and body["error"]["code"] == "submission.none"

    net.run(scenario())


def test_download_over_cap_is_a_miner_fault(chain, wallets, net) -> None:
    data = net.make_zip("y" * 50_000)
    sha = hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        async with net.running_axon(wallets["miner"], chain, data):
            config = FAST.model_copy(update={"max_download_bytes": 1024})
            async with Dendrite(wallets["validator"], config) as dendrite:
                result = await dendrite.fetch_submission(net.neuron_of(chain, wallets["miner"]), sha)
        assert (
            result.status is FetchStatus.TOO_LARGE
            and result.code == "net.too_large"
            and result.is_miner_fault
        )

    net.run(scenario())


def test_down_and_slow_miners_do_not_stall_the_others(chain, wallets, net) -> None:
    data = net.make_zip("fast and honest\n")
    sha = hashlib.sha256(data).hexdigest()

    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()  # answers only once the test is over
            return web.Response(body=b"late")

        app = web.Application()
        app.router.add_get(SUBMISSION_PATH, slow)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        slow_port = runner.addresses[0][1]
        # A port that was just free: nothing listens there, so connections are refused.
        probe = web.AppRunner(web.Application())
        await probe.setup()
        await web.TCPSite(probe, "127.0.0.1", 0).start()
        down_port = probe.addresses[0][1]
        await probe.cleanup()
        base = net.neuron_of(chain, wallets["miner2"])
        slow_neuron = base.model_copy(update={"axon": AxonInfo(ip="127.0.0.1", port=slow_port)})
        down_neuron = Neuron(
            uid=99,
            hotkey=base.hotkey,
            coldkey=base.coldkey,
            stake=0.0,
            validator_permit=False,
            axon=AxonInfo(ip="127.0.0.1", port=down_port),
        )
        no_axon = down_neuron.model_copy(update={"uid": 98, "axon": None})
        config = DendriteConfig(
            timeout_s=0.5, connect_timeout_s=0.5, retries=1, backoff_s=0.05, max_concurrency=4
        )
        try:
            async with net.running_axon(wallets["miner"], chain, data):
                honest = net.neuron_of(chain, wallets["miner"])
                started = time.monotonic()
                async with Dendrite(wallets["validator"], config) as dendrite:
                    results = await dendrite.fetch_many(
                        [(slow_neuron, sha), (down_neuron, sha), (no_axon, sha), (honest, sha)]
                    )
                elapsed = time.monotonic() - started
        finally:
            release.set()
            await runner.cleanup()
        slow_result, down_result, no_axon_result, honest_result = results
        assert honest_result.ok
        assert slow_result.status is FetchStatus.UNREACHABLE and slow_result.code == "net.timeout"
        assert down_result.status is FetchStatus.UNREACHABLE and down_result.code == "net.unreachable"
        assert no_axon_result.status is FetchStatus.UNREACHABLE
        for result in (slow_result, down_result, no_axon_result):
            assert result.retryable and not result.is_miner_fault and result.fault == "infrastructure"
        assert slow_result.attempts == 2 and down_result.attempts == 2  # retried once with backoff
        # Two 0.5 s attempts for the slow miner bound the whole round, not a sum over miners.
        assert elapsed < 3.0, elapsed

    net.run(scenario())


def test_concurrency_is_bounded_across_miners(chain, wallets, net) -> None:
    data = net.make_zip("counted\n")
    sha = hashlib.sha256(data).hexdigest()
    in_flight = {"now": 0, "peak": 0}

    async def counted(request: web.Request) -> web.Response:
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await asyncio.sleep(0.1)
        in_flight["now"] -= 1
        return web.Response(body=data, content_type="application/zip")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get(SUBMISSION_PATH, counted)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = net.neuron_of(chain, wallets["miner"])
        targets = [
            (
                base.model_copy(
                    update={"uid": 10 + i, "axon": AxonInfo(ip="127.0.0.1", port=runner.addresses[0][1])}
                ),
                sha,
            )
            for i in range(6)
        ]
        try:
            async with Dendrite(
                wallets["validator"], FAST.model_copy(update={"max_concurrency": 2})
            ) as dendrite:
                results = await dendrite.fetch_many(targets)
        finally:
            await runner.cleanup()
        assert [r.uid for r in results] == [10, 11, 12, 13, 14, 15]  # input order
        assert all(r.ok for r in results)
        assert in_flight["peak"] == 2

    net.run(scenario())
