"""A test model server: vLLM-style Prometheus metrics whose values the test sets, and OpenAI-style answers.

- ``GET /metrics``: Prometheus text format with ``vllm:num_requests_waiting``,
  ``vllm:num_requests_running``, ``vllm:gpu_cache_usage_perc`` (labelled ``model_name``) and DCGM's
  ``DCGM_FI_DEV_GPU_UTIL``, ``DCGM_FI_DEV_FB_USED``, ``DCGM_FI_DEV_FB_FREE`` (labelled ``gpu``, ``pod``).
- ``POST /v1/chat/completions`` and ``/v1/completions``: a small JSON body naming this server.
- ``POST /control`` with JSON ``{"waiting": 3, "running": 1, "kv_cache": 0.5, "gpu_util": 40, ...}``
  sets the load, as does ``set_load(...)``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["ModelServer"]

LOAD_KEYS = ("waiting", "running", "kv_cache", "gpu_util", "fb_used", "fb_free")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, document: Any) -> None:
        self._send(status, json.dumps(document).encode(), "application/json")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else {}

    def do_GET(self) -> None:
        ms = self.server.model_server
        if self.path.split("?")[0] == "/metrics":
            ms._count("metrics")
            self._send(200, ms.metrics_text().encode(), "text/plain; version=0.0.4; charset=utf-8")
        elif self.path == "/health":
            self._send(200, b"ok", "text/plain")
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        ms = self.server.model_server
        try:
            body = self._body()
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        path = self.path.split("?")[0]
        if path == "/control":
            try:
                ms.set_load(**body)
            except TypeError as exc:
                self._json(400, {"error": str(exc)})
                return
            self._json(200, ms.load)
        elif path in ("/v1/chat/completions", "/v1/completions"):
            ms._count("completions")
            model = body.get("model", ms.model) if isinstance(body, dict) else ms.model
            chat = path.endswith("chat/completions")
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
            text = f"hello from {ms.name}"
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            self._json(200, {
                "id": f"cmpl-{ms.name}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "server": ms.name,
                "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
            })
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: when a route switches to a new cluster, Envoy opens
    # a burst of connections at once, the kernel drops the SYNs past the backlog and retries them a
    # second later, and Envoy's 1 s connect timeout answers 503 UF. Real servers listen with far more.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], model_server: ModelServer) -> None:
        self.model_server = model_server
        super().__init__(address, _Handler)


class ModelServer:
    def __init__(self, name: str, model: str = "test-model", *, pod: str | None = None, port: int = 0) -> None:
        self.name = name
        self.model = model
        self.pod = pod or name
        self.port = port
        self._lock = threading.Lock()
        self._load: dict[str, float] = {k: 0.0 for k in LOAD_KEYS}
        self._counts: dict[str, int] = {"metrics": 0, "completions": 0}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- load ------------------------------------------------------------------------------------

    def set_load(self, **values: float) -> None:
        unknown = set(values) - set(LOAD_KEYS)
        if unknown:
            raise TypeError(f"unknown load keys {sorted(unknown)} (known: {', '.join(LOAD_KEYS)})")
        with self._lock:
            for k, v in values.items():
                self._load[k] = float(v)

    @property
    def load(self) -> dict[str, float]:
        with self._lock:
            return dict(self._load)

    def _count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    @property
    def scrapes(self) -> int:
        with self._lock:
            return self._counts["metrics"]

    @property
    def completions(self) -> int:
        with self._lock:
            return self._counts["completions"]

    def metrics_text(self) -> str:
        load = self.load
        m = json.dumps(self.model)  # a quoted, escaped label value
        gpu = f'gpu="0",pod="{self.pod}"'
        lines = [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{model_name={m}}} {load['waiting']}",
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{model_name={m}}} {load['running']}",
            "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            f"vllm:gpu_cache_usage_perc{{model_name={m}}} {load['kv_cache']}",
            "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
            f"DCGM_FI_DEV_GPU_UTIL{{{gpu}}} {load['gpu_util']}",
            "# TYPE DCGM_FI_DEV_FB_USED gauge",
            f"DCGM_FI_DEV_FB_USED{{{gpu}}} {load['fb_used']}",
            "# TYPE DCGM_FI_DEV_FB_FREE gauge",
            f"DCGM_FI_DEV_FB_FREE{{{gpu}}} {load['fb_free']}",
        ]
        return "\n".join(lines) + "\n"

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ModelServer:
        if self._server is not None:
            raise RuntimeError(f"model server {self.name} is already running on {self.address}")
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"model-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ModelServer(name={self.name!r}, model={self.model!r}, port={self.port})"
