"""The REST batching queue's accounting and the batching file's ignored fields, without a server."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tfpipeline.serving.batching import Arrivals, BatchConfig, Batcher, BatchStats
from tfpipeline.serving.model_config import read_batching_parameters


def test_an_abandoned_call_counts_until_the_model_call_ends():
    release, started = threading.Event(), threading.Event()

    def slow_model(arrays):
        started.set()
        release.wait(10)
        return {"out": arrays["x"] * 2}

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(slow_model, batchable=False, config=BatchConfig(enabled=False), executor=executor,
                              stats=BatchStats(), arrivals=Arrivals())
            call = batcher.enqueue({"x": np.ones((3, 2))}, 3)
            await asyncio.to_thread(started.wait, 10)
            with pytest.raises(TimeoutError):  # the REST handler's --rest_api_timeout_in_ms gives up
                async with asyncio.timeout(0.05):
                    await call
            # The model call still runs in the executor: its rows still count against the queue limit.
            assert call.cancelled() and batcher.waiting_rows == 3
            release.set()
            for _ in range(200):
                if batcher.waiting_rows == 0:
                    break
                await asyncio.sleep(0.01)
            assert batcher.waiting_rows == 0
            # A call that is not abandoned still gets its answer.
            answered = await batcher.enqueue({"x": np.ones((1, 2))}, 1)
            np.testing.assert_array_equal(answered["out"], np.full((1, 2), 2.0))

    asyncio.run(scenario())


def test_thread_pool_name_is_read_and_said_to_be_ignored(tmp_path, capsys):
    path = tmp_path / "batching.txt"
    path.write_text('max_batch_size { value: 8 }\nthread_pool_name { value: "shared" }\n')
    assert read_batching_parameters(path).max_batch_size == 8
    warning = " ".join(capsys.readouterr().err.split())
    assert 'thread_pool_name "shared" is ignored' in warning and "num_batch_threads" in warning
    assert str(path) in warning
