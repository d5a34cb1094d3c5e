"""A real Flask app, served by werkzeug's threaded server, for tests/integration/test_peer_matrix.py.

Run as its own process: `python flask_app.py --http-port P [--https-port Q --cert C --key K]`.
Every answer is what Flask itself produces (its redirect page, its error pages, its default
content-type), so the matrix records a peer no one on the team wrote the HTTP of.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import ssl
import threading

from flask import Flask, Response, abort, jsonify, redirect, request
from werkzeug.serving import make_server

app = Flask(__name__)

BINARY = bytes(range(256)) * 4  # not UTF-8: recorded as base64
STREAM_CHUNKS = [json.dumps({"chunk": i, "pad": "x" * 40 * i}) + "\n" for i in range(5)]


@app.get("/json")
def json_get():
    return jsonify(method="GET", args=request.args.to_dict(flat=False))


@app.post("/json")
def json_post():
    return jsonify(method="POST", got=request.get_json())


@app.post("/form")
def form_post():
    return jsonify(form=request.form.to_dict(flat=False), content_type=request.mimetype)


@app.post("/upload")
def upload():
    files = {name: {"filename": f.filename, "content_type": f.mimetype,
                    "size": len(data := f.read()), "sha256": hashlib.sha256(data).hexdigest()}
             for name, f in request.files.items()}
    return jsonify(fields=request.form.to_dict(flat=False), files=files)


@app.get("/redirect")
def go_elsewhere():
    return redirect("/json?from=redirect")  # 302 with Flask's small HTML page as the body


@app.get("/empty")
def empty():
    return "", 204  # Flask's default content-type: text/html; charset=utf-8


@app.get("/missing")
def missing():
    abort(404)  # Flask's HTML 404 page


@app.get("/boom")
def boom():
    abort(500)  # Flask's HTML 500 page


@app.get("/multi")
def multi():
    response = jsonify(multi=True)
    response.headers.add("link", '</json?page=1>; rel="first"')
    response.headers.add("link", '</json?page=9>; rel="last"')
    response.headers.add("x-multi", "one")
    response.headers.add("x-multi", "two")
    return response


@app.get("/gzip")
def gzipped():
    body = json.dumps({"zipped": True, "words": ["alpha"] * 50}).encode()
    if "gzip" not in request.headers.get("accept-encoding", ""):
        return Response(body, mimetype="application/json")
    response = Response(gzip.compress(body), mimetype="application/json")
    response.headers["content-encoding"] = "gzip"
    response.headers["vary"] = "accept-encoding"
    return response


@app.get("/binary")
def binary():
    return Response(BINARY, mimetype="application/octet-stream")


@app.get("/stream")
def stream():
    def generate():
        yield from STREAM_CHUNKS
    return Response(generate(), mimetype="application/x-ndjson")  # no length: chunked


@app.put("/items/<int:item>")
def put_item(item: int):
    return jsonify(put=item, got=request.get_json())


@app.delete("/items/<int:item>")
def delete_item(item: int):
    return jsonify(deleted=item)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--https-port", type=int)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    servers = [make_server(args.host, args.http_port, app, threaded=True)]
    if args.https_port:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        servers.append(make_server(args.host, args.https_port, app, threaded=True, ssl_context=context))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
