"""A small OpenAI-compatible completions server over a local Hugging Face causal LM, for tests.

``POST /v1/completions`` answers what lm-eval's ``local-completions`` sends: prompts as a string,
a list of strings, token ids or a batch of token-id lists; ``echo`` with per-token ``logprobs``
(loglikelihood requests) and greedy or seeded-sampled generation with ``stop`` strings
(generate_until). ``GET /v1/models`` names the served model. :func:`serve` runs it in a
subprocess, as a deployment would, and returns once the endpoint answers.

Run by hand: ``python tests/openai_server.py MODEL_FOLDER --port 8000 --name tiny``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Completer:
    """The model behind the endpoint: one request at a time, every prompt unpadded."""

    def __init__(self, folder: str, name: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.name, self.folder = torch, name, folder
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        config = self.model.config
        self.max_positions = int(getattr(config, "n_positions", None)
                                 or getattr(config, "max_position_embeddings", 2048))
        self.lock = threading.Lock()

    def _prompts(self, prompt: Any) -> list[list[int]]:
        if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise ValueError("prompt must be a string, a list of strings or (lists of) token ids")
        ids = [self.tok(p, add_special_tokens=False).input_ids if isinstance(p, str) else list(p)
               for p in prompt]
        if too_long := [len(i) for i in ids if not 0 < len(i) <= self.max_positions]:
            raise ValueError(f"a prompt of {too_long[0]} tokens; this model takes 1 to {self.max_positions}")
        return ids

    def _log_softmax(self, ids: list[int]) -> Any:
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids])).logits[0]
        return self.torch.log_softmax(logits.float(), dim=-1)

    def _generate(self, ids: list[int], body: dict[str, Any], index: int) -> tuple[list[int], str, str]:
        """Generated ids, their text (cut at the first stop string) and the finish reason."""
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        temperature = float(body.get("temperature") or 0.0)
        rng = self.torch.Generator().manual_seed(int(body.get("seed") or 0) + index)
        max_new = min(int(body.get("max_tokens", 16)), self.max_positions - len(ids))
        new: list[int] = []
        while len(new) < max_new:
            last = self._log_softmax(ids + new)[-1]
            if temperature > 0:
                probs = self.torch.softmax(last / temperature, dim=-1)
                token = int(self.torch.multinomial(probs, 1, generator=rng))
            else:
                token = int(last.argmax())
            if token == self.tok.eos_token_id:
                return new, self._text(ids, new), "stop"
            new.append(token)
            text = self._text(ids, new)
            cuts = [text.find(s) for s in stops if s and s in text]
            if cuts:
                return new, text[: min(cuts)], "stop"
        return new, self._text(ids, new), "length"

    def _text(self, ids: list[int], new: list[int]) -> str:
        """The continuation's text as the detokenised whole minus the prompt (keeps spaces)."""
        return self.tok.decode(ids + new)[len(self.tok.decode(ids)):]

    def _choice(self, ids: list[int], body: dict[str, Any], index: int) -> tuple[dict[str, Any], int]:
        """One choice and its number of generated tokens."""
        echo, top_n = bool(body.get("echo")), body.get("logprobs")
        new, text, finish = self._generate(ids, body, index)
        choice: dict[str, Any] = {"index": index, "text": (self.tok.decode(ids) if echo else "") + text,
                                  "logprobs": None, "finish_reason": finish}
        if top_n is not None:
            seq, first = ids + new, 0 if echo else len(ids)
            logp = self._log_softmax(seq)
            rows = [(seq[pos], logp[pos - 1]) for pos in range(max(first, 1), len(seq))]
            tops = [self.torch.topk(row, max(int(top_n), 1)) for _, row in rows]
            pad: list[None] = [None] if first == 0 else []  # nothing predicts the first token
            choice["logprobs"] = {
                "tokens": self.tok.convert_ids_to_tokens(seq[first:]),
                "token_logprobs": pad + [float(row[token]) for token, row in rows],
                "top_logprobs": pad + [dict(zip(self.tok.convert_ids_to_tokens(t.indices.tolist()),
                                                t.values.tolist(), strict=True)) for t in tops],
                "text_offset": [len(self.tok.decode(seq[first: p + 1])) - len(self.tok.decode([seq[p]]))
                                for p in range(first, len(seq))],
            }
        return choice, len(new)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompts = self._prompts(body.get("prompt"))
        with self.lock:
            answers = [self._choice(ids, body, i) for i, ids in enumerate(prompts)]
        choices = [choice for choice, _ in answers]
        prompt_tokens, done = sum(len(p) for p in prompts), sum(n for _, n in answers)
        return {"id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion",
                "created": int(time.time()), "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": done,
                          "total_tokens": prompt_tokens + done}}


def make_handler(completer: Completer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._error(404, f"no route {self.path}")
            self._send(200, {"object": "list", "data": [
                {"id": completer.name, "object": "model", "owned_by": "tests", "root": completer.folder}]})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/completions":
                return self._error(404, f"no route {self.path}")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            except ValueError as exc:
                return self._error(400, f"invalid JSON: {exc}")
            if body.get("model") not in (None, completer.name):
                return self._error(404, f"model {body.get('model')!r} does not exist")
            try:
                self._send(200, completer.complete(body))
            except (ValueError, TypeError) as exc:
                self._error(400, str(exc))
            except Exception as exc:  # an answer, not a dropped connection
                self._send(500, {"error": {"message": repr(exc), "type": "server_error"}})

    return Handler


@dataclass
class Endpoint:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/completions"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET without any proxy: the server is on 127.0.0.1."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as answer:
        return json.loads(answer.read())


@contextlib.contextmanager
def serve(model: Path, *, name: str = "tiny", port: int | None = None, log: Path | None = None,
          timeout: float = 60.0) -> Iterator[Endpoint]:
    """Serve ``model`` on 127.0.0.1 (a free port unless given) until the block ends."""
    port = port or free_port()
    log = log or Path(os.devnull)
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(model),
                                    "--port", str(port), "--name", name],
                                   stdout=sink, stderr=sink, stdin=subprocess.DEVNULL)
    endpoint = Endpoint(port, process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                if get_json(f"{endpoint.base_url}/models", timeout=2)["data"][0]["root"] == str(model):
                    break
            try:  # the poll interval, and fail fast if the server died
                code = process.wait(timeout=0.1)
                tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
                raise RuntimeError(f"model server exited with {code} before answering:\n{tail}")
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"model server gave no answer on port {port} in {timeout} s") \
                        from None
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a local Hugging Face causal-LM folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default="tiny", help="the model name clients must send")
    args = parser.parse_args()
    completer = Completer(args.model, args.name)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(completer))
    server.daemon_threads = True
    print(f"serving {args.model} as {args.name!r} on http://{args.host}:{server.server_port}/v1",
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
