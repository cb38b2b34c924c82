"""Load generator of the serving benchmark (scripts/bench/serve.sh): N concurrent streaming chat
clients against an OpenAI-compatible endpoint on this machine, bounded in requests and time.

Each client sends `--requests` requests one after the other, each with its own prompt (no two
requests share their first tokens, so no server can answer from a cached prompt), 128 new tokens
with `ignore_eos` (both servers take it), greedy. A 429 counts as shed load: the client waits the
`Retry-After` it was given (at most a second) and goes on to its next request. Prints one JSON
line: aggregate completion tokens/s, time to first token and inter-token latency percentiles,
errors by status.

  serve_load.py --url http://127.0.0.1:PORT --engine NAME --clients 8 --prompts prompts.json
"""

import argparse
import asyncio
import json
import statistics
import sys
import time


def write_prompts(path, count):
    """`count` prompts of about 520 tokens over the sample notes and pages, each opening with its
    own number and reading a different window of the text."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "samples"
    text = " ".join(
        " ".join(p.read_text(errors="replace").split())
        for p in sorted(root.rglob("*"))
        if p.suffix in (".md", ".html") and p.is_file()
    )
    window, step = 1250, max(1, (len(text) - 1250) // max(count, 1))
    prompts = [
        f"Request {i + 1}: read these notes and summarize what they say.\n\n{text[i * step:i * step + window]}"
        for i in range(count)
    ]
    json.dump(prompts, open(path, "w"))


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    low, high = int(k), min(int(k) + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (k - low)


async def one_request(client, url, prompt, args):
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if args.retrieval is not None:
        # With retrieval on, the answer is always generated: the benchmark's prompts are not about
        # the indexed notes, and abstaining ("the notes do not say") would skip the model.
        body["retrieval"] = {"enabled": args.retrieval, "abstain": False} if args.retrieval else {"enabled": False}
    started = time.perf_counter()
    stamps, completion_tokens, prompt_tokens = [], None, None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            retry = response.headers.get("retry-after")
            return {"status": response.status_code, "retry_after": float(retry) if retry else None}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
            if chunk.get("usage"):
                completion_tokens = chunk["usage"].get("completion_tokens")
                prompt_tokens = chunk["usage"].get("prompt_tokens")
    if not stamps:
        return {"status": "empty"}
    return {
        "status": 200,
        "ttft": stamps[0] - started,
        "gaps": [b - a for a, b in zip(stamps, stamps[1:])],
        "tokens": completion_tokens if completion_tokens is not None else len(stamps),
        "prompt_tokens": prompt_tokens,
    }


async def run(args):
    import httpx

    prompts = json.load(open(args.prompts))
    needed = args.clients * args.requests
    if len(prompts) < needed:
        sys.exit(f"{args.prompts} has {len(prompts)} prompts; {needed} are needed")
    url = args.url.rstrip("/") + "/v1/chat/completions"
    results = []
    timeout = httpx.Timeout(args.timeout)
    # A new connection per request, as separate users would open: no request depends on whether
    # the server kept the last one open (llama-server closes idle ones, and a reused connection it
    # closed fails the next request).
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def worker(c):
            for r in range(args.requests):
                prompt = prompts[c * args.requests + r]
                try:
                    result = await one_request(client, url, prompt, args)
                except Exception as err:  # a transport error is a failed request, counted by name
                    result = {"status": type(err).__name__}
                results.append(result)
                if result["status"] == 429:
                    await asyncio.sleep(min(result.get("retry_after") or 1.0, 1.0))

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in range(args.clients))), args.deadline)
        wall = time.perf_counter() - started
    served = [r for r in results if r["status"] == 200]
    errors = {}
    for r in results:
        if r["status"] not in (200, 429):
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    ttft = [r["ttft"] for r in served]
    gaps = [g for r in served for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in served)
    prompt_sizes = [r["prompt_tokens"] for r in served if r["prompt_tokens"]]
    ms = lambda v: None if v is None else round(v * 1000, 1)
    return {
        "engine": args.engine,
        "clients": args.clients,
        "retrieval": bool(args.retrieval),
        "requests": len(results),
        "served": len(served),
        "shed_429": sum(1 for r in results if r["status"] == 429),
        "errors": errors,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "ttft_p50_ms": ms(percentile(ttft, 0.5)),
        "ttft_p99_ms": ms(percentile(ttft, 0.99)),
        "itl_p50_ms": ms(percentile(gaps, 0.5)),
        "itl_p99_ms": ms(percentile(gaps, 0.99)),
        "ttft_mean_ms": ms(statistics.fmean(ttft)) if ttft else None,
        "prompt_tokens_mean": round(statistics.fmean(prompt_sizes)) if prompt_sizes else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-prompts", metavar="FILE", help="write the prompts to FILE and exit")
    parser.add_argument("--count", type=int, default=40, help="prompts to write")
    parser.add_argument("--url")
    parser.add_argument("--engine")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after the other")
    parser.add_argument("--prompts", help="JSON list of prompts, one per request")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--retrieval", type=lambda v: v == "on", default=None,
                        help="on|off: engram's retrieval option (omitted for other servers)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one request may take")
    parser.add_argument("--deadline", type=float, default=900, help="seconds the whole run may take")
    args = parser.parse_args()
    if args.write_prompts:
        write_prompts(args.write_prompts, args.count)
        return
    if not (args.url and args.engine and args.clients and args.prompts):
        parser.error("--url, --engine, --clients and --prompts are needed")
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        sys.exit("the load generator only targets this machine's loopback addresses")
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
