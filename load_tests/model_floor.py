"""The model's own floor: time to first token and tokens per second, from one streamed request.

Measured straight against the OpenAI-compatible endpoint (the offline model locally), with
no service in between, so `TTFD - model TTFT` is what the service adds.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp


async def measure(base_url: str, api_key: str = "offline", model: str = "gpt-4o-mini", samples: int = 3) -> dict[str, Any]:
    """Median TTFT and token rate over `samples` streamed requests (run before the load)."""
    ttfts: list[float] = []
    rates: list[float] = []
    tokens = 0
    body = {"model": model, "stream": True, "max_tokens": 300,
            "messages": [{"role": "system", "content": "You are Ada, a patient maths tutor."},
                         {"role": "user", "content": "Can you explain fractions to me?"}]}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(samples):
            t0 = time.monotonic()
            first = last = None
            count = 0
            async with session.post(f"{base_url.rstrip('/')}/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {api_key}"}) as response:
                response.raise_for_status()
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices", []):
                        if (choice.get("delta") or {}).get("content"):
                            now = time.monotonic()
                            first = first or now
                            last = now
                            count += 1
            if first is None or last is None:
                continue
            ttfts.append(first - t0)
            if count > 1 and last > first:
                rates.append((count - 1) / (last - first))
            tokens = count
    ttfts.sort()
    rates.sort()
    return {
        "ttft_s": ttfts[len(ttfts) // 2] if ttfts else None,
        "tokens_per_second": rates[len(rates) // 2] if rates else None,
        "sample_tokens": tokens,
        "samples": len(ttfts),
    }
