"""The Batch emulator in scripted mode, under the name the lifecycle tests know: the real
``azure.batch.BatchClient`` talks HTTP to it, it checks what it is sent (api-version, ids, chunk
sizes, body sizes, authentication) and plays the task lifecycles the tests script. The emulator
itself, and what it models of the service, is tests/compute/batch_emulator.py."""

from __future__ import annotations

from tests.compute.batch_emulator import API_VERSION, BatchEmulator, Call

__all__ = ["API_VERSION", "Call", "FakeBatch"]


class FakeBatch(BatchEmulator):
    """Scripted mode: tasks are added and listed but never run; ``set_task`` moves them."""

    def __init__(self, **kwargs) -> None:
        super().__init__(runner=None, **kwargs)
