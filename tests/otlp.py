"""An OTLP/HTTP traces receiver for tests: what a collector is sent, as it arrives and decoded
with opentelemetry-proto (the schema the exporter itself depends on)."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Collector:
    """POST /v1/traces: each export's headers, raw body and decoded request."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        body = await request.read()
        self.bodies.append(body)
        received = ExportTraceServiceRequest()
        received.ParseFromString(body)
        self.requests.append(received)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")
