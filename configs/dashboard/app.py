"""The model dashboard: a table of the models' metrics, and /healthz for health checks."""

import json
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COLUMNS = ["model", "version", "accuracy", "train_rows", "test_rows"]
MODELS = json.loads((Path(__file__).parent / "metrics.json").read_text())


def page(models: list[dict]) -> str:
    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{escape(cell)}</{tag}>" for cell in cells) + "</tr>"

    rows = [row(COLUMNS, "th")]
    rows += [row([str(model.get(column, "")) for column in COLUMNS], "td") for model in models]
    return f"<!doctype html><title>Models</title><h1>Models</h1><table>{''.join(rows)}</table>\n"


PAGE = page(MODELS)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, "text/plain", "ok\n")
        elif self.path == "/":
            self.reply(200, "text/html; charset=utf-8", PAGE)
        else:
            self.reply(404, "text/plain", "not found\n")

    def reply(self, status: int, content_type: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The health check polls every few seconds: log only its failures.
        if self.path != "/healthz" or code != 200:
            super().log_request(code, size)


if __name__ == "__main__":
    print(f"serving {len(MODELS)} models on :8080", flush=True)
    ThreadingHTTPServer(("", 8080), Handler).serve_forever()
