"""The events example's reference service: exchange rates to EUR over HTTP, the lookup protocol
mrbatch's API enrichment speaks (POST {"keys": [...]} -> {"results": {key: {...} | null}}).

    python pipeline/rates_service.py [PORT]      # serves on 127.0.0.1 until Ctrl-C
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RATES = {"EUR": "1", "USD": "0.92", "GBP": "1.17", "JPY": "0.0061", "CHF": "1.05"}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        keys = json.loads(self.rfile.read(length) or b"{}").get("keys", [])
        results = {k: ({"rate_to_eur": RATES[k]} if k in RATES else None) for k in keys}
        body = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve(port: int) -> ThreadingHTTPServer:
    """Start the service in a thread; ``shutdown()`` stops it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    server = ThreadingHTTPServer(
        ("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8741), Handler
    )
    print(f"rates service on http://127.0.0.1:{server.server_port}/rates", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
