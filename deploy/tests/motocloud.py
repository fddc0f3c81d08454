"""moto's server on a loopback port, with the real AWS CLI in front of it.

One helper process per test session (`Helper`, started by test_moto.py):
- moto's server mode (`ThreadedMotoServer`) on 127.0.0.1, on a free port;
- the real AWS CLI (awscli 1.x, pinned by scripts/setup.sh), in-process,
  with `AWS_ENDPOINT_URL` set to that server: `awscli_check.make_driver`,
  which also checks the service model's ID patterns and enums;
- a Unix socket. fakecloud.py's `aws` forwards to it the calls of the
  services in MOTO_SERVICES, and gets back the CLI's exit status, stdout and
  stderr. The tests and fakecloud's eksctl make boto3 calls through it, to
  arrange the account and to look at it.

A CLI process per call costs about half a second to start; a call through the
helper costs milliseconds. This module is imported by fakecloud.py, which runs
without site-packages (`python -S`): nothing here imports a third-party
package outside `serve`.
"""
from __future__ import annotations

import json
import os
import socket
import sys

# Answered by moto. FSx (moto has no Lifecycle, no client-token idempotency,
# no data repository associations) and EKS (moto's describe-cluster has no
# resourcesVpcConfig.vpcId) stay in fakecloud.py: deploy/tests/README.md.
MOTO_SERVICES = frozenset({"sts", "ec2", "s3", "s3api", "iam", "cloudformation", "cloudwatch"})


def service_of(argv: list[str]) -> str:
    """The service an `aws ARGV` call names (its first word that is not a
    global option or an option's value): "ec2", "fsx", ..."""
    words = [a for i, a in enumerate(argv) if not a.startswith("--")
             and (i == 0 or argv[i - 1] not in ("--region", "--output"))]
    return words[0] if words else ""


class MotoError(Exception):
    """A boto3 call through the helper failed; `code` is AWS's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _exchange(sock_path: str, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    if not chunks:
        raise RuntimeError(f"the moto helper at {sock_path} closed without an answer")
    return json.loads(b"".join(chunks))


def forward(sock_path: str, argv: list[str]) -> int:
    """Runs `aws ARGV` in the helper, against moto; prints what the CLI
    printed and returns its exit status."""
    reply = _exchange(sock_path, {"argv": argv})
    sys.stdout.write(reply["out"])
    sys.stderr.write(reply["err"])
    return reply["rc"]


def call(sock_path: str, service: str, method: str, **kwargs):
    """A boto3 call in the helper (`client(service).method(**kwargs)`), against moto."""
    reply = _exchange(sock_path, {"boto": [service, method, kwargs]})
    if "error" in reply:
        raise MotoError(reply["error"].get("Code", "?"), reply["error"].get("Message", ""))
    return reply["result"]


class Helper:
    """The helper process: `Helper(dir)` starts it, `.stop()` ends it."""

    def __init__(self, directory: str) -> None:
        import subprocess

        self.sock = os.path.join(directory, "moto.sock")
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", self.sock],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()  # the endpoint, once it listens
        if not line.startswith("http://"):
            self.proc.kill()
            raise RuntimeError("the moto helper did not start:\n" + line + self.proc.stderr.read())
        self.endpoint = line

    def call(self, service: str, method: str, **kwargs):
        return call(self.sock, service, method, **kwargs)

    def reset(self) -> None:
        """An empty account, as at the start of every test."""
        _exchange(self.sock, {"reset": True})

    def stop(self) -> None:
        import subprocess

        try:
            _exchange(self.sock, {"stop": True})
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def serve(sock_path: str) -> None:
    import logging
    import urllib.request

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import awscli_check

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # AWS's managed policies (AmazonFSxFullAccess), so that attaching one
    # that does not exist, in the wrong partition say, fails as on AWS
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    driver = awscli_check.make_driver(endpoint)  # sets the environment boto3 reads too
    import boto3
    from botocore.exceptions import ClientError

    session = boto3.session.Session(region_name="us-east-1")
    clients: dict = {}

    def boto(service: str, method: str, kwargs: dict) -> dict:
        client = clients.get(service) or clients.setdefault(service, session.client(service))
        try:
            result = getattr(client, method)(**kwargs)
        except ClientError as e:
            return {"error": e.response.get("Error", {})}
        result.pop("ResponseMetadata", None)
        return {"result": result}

    if os.path.exists(sock_path):
        os.unlink(sock_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(8)
    print(endpoint, flush=True)
    running = True
    while running:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            req = json.loads(data)
            if "argv" in req:
                rc, out, err = awscli_check.run(driver, req["argv"])
                reply = {"rc": rc, "out": out, "err": err}
            elif "boto" in req:
                reply = boto(*req["boto"])
            elif "reset" in req:
                urllib.request.urlopen(urllib.request.Request(
                    endpoint + "/moto-api/reset", method="POST"), timeout=30).read()
                clients.clear()
                reply = {}
            else:
                running = False
                reply = {}
            conn.sendall(json.dumps(reply, default=str).encode())
    listener.close()
    os.unlink(sock_path)
    server.stop()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
