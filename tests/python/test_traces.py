"""The service's OpenTelemetry traces, received over OTLP/HTTP by a small collector built on the
published OTLP protobuf types (`opentelemetry-proto`).

A chat completion with retrieval, sent with a W3C `traceparent`, must arrive as one trace: the HTTP
server span under the caller's span, `chat {model}` under it, and under that `retrieval {index}`
(with `embeddings {model}` inside), `queue`, `prefill` and `decode`, in that order in time, named
and attributed by the GenAI semantic conventions.
"""

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from helpers import QUESTION, Service, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collector:
    """An OTLP/HTTP trace receiver on a free loopback port, keeping every span it is sent."""

    def __init__(self):
        self.spans = []
        self.resources = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces" or "protobuf" not in self.headers.get("content-type", ""):
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    collector.resources.append(
                        {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    )
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans.extend(scope_spans.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, prefix):
        return [s for s in self.spans if s.name.startswith(prefix)]

    def stop(self):
        self.server.shutdown()


def attributes(span):
    values = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        values[a.key] = getattr(a.value, kind) if kind != "array_value" else [
            v.string_value for v in a.value.array_value.values
        ]
    return values


def test_a_chat_completion_arrives_as_one_trace_of_genai_spans(corpus):
    env, _ = corpus
    collector = Collector()
    traced = dict(env)
    traced.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    })
    server = Service(traced)
    try:
        body = json.dumps({
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 8,
            "temperature": 0,
        }).encode()
        request = urllib.request.Request(
            f"{server.base}/v1/chat/completions", data=body, method="POST",
            headers={
                "content-type": "application/json",
                "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01",
                "x-request-id": "trace-test-1",
            },
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
        deadline = time.time() + 30
        while not collector.named("decode ") and time.time() < deadline:
            time.sleep(0.2)
    finally:
        assert server.stop() == 0
        collector.stop()

    trace = [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]
    names = sorted(s.name for s in trace)
    assert trace, f"no span of the caller's trace arrived; got {[s.name for s in collector.spans]}"
    assert any(r.get("service.name") == "inference-service" for r in collector.resources), collector.resources

    def one(prefix):
        found = [s for s in trace if s.name.startswith(prefix)]
        assert len(found) == 1, f"one span named {prefix!r}… expected, got {names}"
        return found[0]

    http = one("POST /v1/chat/completions")
    chat = one("chat ")
    retrieval = one("retrieval ")
    embeddings = one("embeddings ")
    queue, prefill, decode = one("queue "), one("prefill "), one("decode ")

    assert http.parent_span_id.hex() == CALLER_SPAN, "the server span continues the caller's trace"
    assert http.kind == http.SPAN_KIND_SERVER
    assert attributes(http)["http.response.status_code"] == 200
    assert attributes(http)["request_id"] == "trace-test-1"
    assert chat.parent_span_id == http.span_id
    for child in (retrieval, queue, prefill, decode):
        assert child.parent_span_id == chat.span_id, f"{child.name} is a child of {chat.name}"
    assert embeddings.parent_span_id == retrieval.span_id

    model = answer["model"]
    assert chat.name == f"chat {model}"
    chat_attributes = attributes(chat)
    assert chat_attributes["gen_ai.operation.name"] == "chat"
    assert chat_attributes["gen_ai.request.model"] == model
    assert chat_attributes["gen_ai.request.max_tokens"] == 8
    assert chat_attributes["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert chat_attributes["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert chat_attributes["gen_ai.response.finish_reasons"] == [answer["choices"][0]["finish_reason"]]
    assert attributes(embeddings)["gen_ai.operation.name"] == "embeddings"
    assert attributes(retrieval)["gen_ai.operation.name"] == "retrieval"
    # Prompt tokens read (fewer than the prompt's when it begins like the last one read).
    assert 2 <= attributes(prefill)["engram.prefill.tokens"] <= answer["usage"]["prompt_tokens"]

    # The phases follow each other, inside the chat span.
    assert chat.start_time_unix_nano <= retrieval.start_time_unix_nano
    assert retrieval.end_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano <= prefill.start_time_unix_nano
    assert prefill.end_time_unix_nano <= decode.start_time_unix_nano
    assert decode.end_time_unix_nano <= chat.end_time_unix_nano <= http.end_time_unix_nano
