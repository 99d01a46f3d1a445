"""Calling the hook app in-process (the real app object, no socket), for fast property tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


def post(app: Any, path: str, body: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
            return await client.post(path, content=body, headers={"content-type": "application/json"})

    return asyncio.run(call())


def get(app: Any, path: str) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hook") as client:
            return await client.get(path)

    return asyncio.run(call())
