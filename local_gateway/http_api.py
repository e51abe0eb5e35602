"""An HTTP API (API Gateway v2, payload format 2.0) on loopback: template.yaml's HttpApi routes.

Each request becomes the event API Gateway would send (lower-case headers, `pathParameters`, a
body base64-encoded unless it is text, `requestContext.http`), the route's function runs as the
stack runs every function, and its answer becomes the response: `statusCode`, `headers`,
`body` (decoded when `isBase64Encoded`). What API Gateway answers by itself, reproduced here:

* a path no route matches: `404 {"message":"Not Found"}`;
* the route's throttling (the API's DefaultRouteSettings / RouteSettings, read from the template):
  a token bucket per route (throttle.py); a request that finds it empty is answered
  `429 {"message":"Too Many Requests"}` before the function runs, without CORS headers (so a
  browser's page sees a network error, not the answer);
* a function that raises: `500 {"message":"Internal Server Error"}`, without detail
  (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-troubleshooting-lambda.html);
* a function whose reserved concurrency (ReservedConcurrentExecutions) is all in use: Lambda
  throttles the synchronous invocation (TooManyRequestsException) and API Gateway answers that
  500 too, as it does whenever "the Lambda API rejects the invocation request"
  (https://docs.aws.amazon.com/lambda/latest/dg/services-apigateway-errors.html); it never retries.

Left out: the account's own throttles (API Gateway's 10,000 requests/s, Lambda's unreserved
concurrency), custom domains and authorizers (the template declares none).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .template import HttpRoute
from .throttle import TokenBucket, route_bucket

log = logging.getLogger(__name__)
Invoke = Callable[[str, dict[str, Any]], Awaitable[Any]]
_TEXT = ("text/", "application/json", "application/x-www-form-urlencoded", "application/xml")


#: What API Gateway answers by itself (its own bodies, no CORS headers)
TOO_MANY_REQUESTS = {"message": "Too Many Requests"}
INTERNAL_SERVER_ERROR = {"message": "Internal Server Error"}
#: the app key of the route buckets (route key -> TokenBucket), for the stack's stats
BUCKETS = web.AppKey("buckets", dict)


def http_api_app(routes: tuple[HttpRoute, ...], invoke: Invoke, *, reserved: Mapping[str, int | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> web.Application:
    """The routes' app. `reserved`: function -> ReservedConcurrentExecutions (None: unreserved)."""
    app = web.Application(client_max_size=10 * 1024 * 1024)  # HTTP API's payload limit
    app[BUCKETS] = {}
    running: dict[str, int] = {}  # function -> invocations under way (this app's only: the entry's functions)
    for route in routes:
        bucket = route_bucket(route.throttling_rate, route.throttling_burst, clock)
        if bucket is not None:
            app[BUCKETS][f"{route.method} {route.path}"] = bucket
        limit = (reserved or {}).get(route.function)
        app.router.add_route(route.method, route.path, _handler(route, invoke, bucket, limit, running))
    app.middlewares.append(_not_found)
    return app


@web.middleware
async def _not_found(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"message": "Not Found"}, status=404)
    except web.HTTPMethodNotAllowed:
        return web.json_response({"message": "Not Found"}, status=404)  # HTTP API has no 405


def _handler(route: HttpRoute, invoke: Invoke, bucket: TokenBucket | None, reserved: int | None,
             running: dict[str, int]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if bucket is not None and not bucket.take():
            return web.json_response(TOO_MANY_REQUESTS, status=429)
        event = await payload_v2(request, route)
        if reserved is not None and running.get(route.function, 0) >= reserved:
            log.warning("%s throttled: its %d reserved executions are all in use", route.function, reserved)
            return web.json_response(INTERNAL_SERVER_ERROR, status=500)
        running[route.function] = running.get(route.function, 0) + 1  # the loop's thread only: no lock
        try:
            answer = await invoke(route.function, event)
        except Exception:  # noqa: BLE001 - a Lambda error: logged, never shown
            log.exception("%s failed", route.function)
            return web.json_response(INTERNAL_SERVER_ERROR, status=500)
        finally:
            running[route.function] -= 1
        return response(answer)

    return handle


async def payload_v2(request: web.Request, route: HttpRoute) -> dict[str, Any]:
    """The payload 2.0 event API Gateway's HTTP API sends for this request."""
    raw = await request.read()
    content_type = request.headers.get("content-type", "")
    text = not raw or content_type.startswith(_TEXT)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():  # repeated headers joined by commas, as API Gateway does
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    cookies = request.headers.getall("cookie", [])
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{route.method} {route.path}",
        "rawPath": request.path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000", "apiId": "local", "domainName": request.host, "domainPrefix": "local",
            "http": {"method": request.method, "path": request.path, "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                     "sourceIp": request.remote or "127.0.0.1", "userAgent": request.headers.get("user-agent", "")},
            "requestId": uuid.uuid4().hex, "routeKey": f"{route.method} {route.path}", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not text,
    }
    if cookies:
        event["cookies"] = [c.strip() for line in cookies for c in line.split(";")]
    if request.query:
        event["queryStringParameters"] = {k: ",".join(request.query.getall(k)) for k in request.query}
    if request.match_info:
        event["pathParameters"] = dict(request.match_info)
    if raw:
        event["body"] = raw.decode("utf-8", "replace") if text else base64.b64encode(raw).decode()
    return event


def response(answer: Any) -> web.Response:
    """The function's answer as HTTP API maps it (payload 2.0): a dict with statusCode is the
    response; anything else is a 200 JSON body."""
    if not (isinstance(answer, dict) and "statusCode" in answer):
        return web.json_response(answer)
    body = answer.get("body") or ""
    data = base64.b64decode(body) if answer.get("isBase64Encoded") else str(body).encode()
    headers = {k: str(v) for k, v in (answer.get("headers") or {}).items()}
    headers.setdefault("content-type", "application/json")
    return web.Response(status=int(answer["statusCode"]), body=data, headers=headers)
