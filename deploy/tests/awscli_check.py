"""Replays `aws` command lines through the real AWS CLI, without sending them.

The toolkit's every `aws` call goes to fakecloud.py; this module checks each
one as the real CLI (awscli 1.x, pinned by scripts/setup.sh) would: its
argument parsing, botocore's parameter validation against the service model
(unknown or missing parameters, wrong types, lengths), and what botocore
leaves to the service: the `pattern` the model gives string parameters such
as IDs (fs-..., subnet-...) and the values of its enums. A request that passes all of it
is stopped just before it would be sent. In-process, one CLI driver for the
whole test session: a few milliseconds a call.
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re

_SENT = "shardwise: validated, not sent"
_driver = None


class _Stop(Exception):
    pass


def _stop(request, **_):
    raise _Stop(_SENT)


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str | None):
    """The pattern as a Python regex; None for none, and for the few that use
    Unicode classes (\\p{L} and the like) Python's re cannot read: those are
    left unchecked (tag keys and values, names, not IDs)."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _patterns(shape, value, path: str, bad: list[str]) -> None:
    """Every string of `value` against the pattern its shape declares."""
    if value is None:
        return
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            if isinstance(value, dict) and name in value:
                _patterns(member, value[name], f"{path}.{name}" if path else name, bad)
    elif shape.type_name == "list":
        for i, v in enumerate(value if isinstance(value, list) else []):
            _patterns(shape.member, v, f"{path}[{i}]", bad)
    elif shape.type_name == "map":
        for k, v in (value.items() if isinstance(value, dict) else []):
            _patterns(shape.value, v, f"{path}.{k}", bad)
    elif shape.type_name == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            bad.append(f"{path}: {value!r} is not one of {', '.join(shape.enum)}")
        compiled = _compiled(shape.metadata.get("pattern"))
        if compiled is not None and compiled.search(value) is None:
            bad.append(f"{path}: {value!r} does not match the pattern {compiled.pattern}")


def _check_patterns(params, model, **_):
    bad: list[str] = []
    if model.input_shape is not None:
        _patterns(model.input_shape, params, "", bad)
    if bad:
        raise _Stop("Parameter validation failed (the model's patterns and enums): " +
                    "; ".join(bad))


def make_driver(endpoint: str | None = None):
    """A real AWS CLI driver that checks the model's patterns and enums too.
    Without `endpoint` it stops every request before it is sent; with one
    (moto's server, motocloud.py) it sends them there."""
    # No real credentials or configuration may leak in, and none is needed.
    os.environ.update(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
                      AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    from awscli.clidriver import create_clidriver  # scripts/setup.sh installs awscli

    driver = create_clidriver()
    driver.session.register("before-parameter-build", _check_patterns)
    if not endpoint:
        driver.session.register("before-send", _stop)
    return driver


def run(driver, argv: list[str]) -> tuple[int, str, str]:
    """One CLI call in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = driver.main(list(argv))
        except SystemExit as e:  # argparse's way out: a missing required argument
            rc = e.code if isinstance(e.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


def check(argv: list[str]) -> str | None:
    """None when the real CLI would send `argv` (the arguments after `aws`);
    otherwise what the CLI said instead."""
    global _driver
    if _driver is None:
        _driver = make_driver()
    _, _, text = run(_driver, argv)
    if _SENT in text:
        return None
    # awscli 1's usage text opens with a note about version 2: keep what failed.
    lines = [ln for ln in text.splitlines()
             if ln.strip() and "AWS CLI version 2" not in ln and not ln.startswith(("usage:", "  aws", "To see help"))]
    return "\n".join(lines) or "the CLI stopped without a message"
