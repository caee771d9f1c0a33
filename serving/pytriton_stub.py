"""Model ``groupdiff`` inside PyTriton's Python backend stubs: refusals answered with Triton's error codes.

PyTriton's own stub model forwards each request to the frontend process (serving/triton.py) and answers any
exception raised there with an INTERNAL error (HTTP 500) whose message is a Python traceback, server paths
included. The frontend raises a refused request as `Refusal`, one marked line ``groupdiff-refusal <CODE>
<contract code>: <message>``; `with_contract_errors` wraps PyTriton's model so that such a request is answered
with that Triton code (``INVALID_ARG``: HTTP 400 / gRPC INVALID_ARGUMENT, ``UNAVAILABLE``: 503 / UNAVAILABLE)
and the contract message alone, and any other failure with a plain INTERNAL error whose details stay in the
server log. `install_entry_point` puts the wrapper in front of PyTriton's model in a model store, before Triton
loads it.

The entry point also lengthens PyTriton's handshake: every instance but the first fetches its config from a socket
that instance 0 opens, and PyTriton gives it 1 s from the start of its own load. Triton loads the instances in
parallel, so on a loaded machine instance 0 can take longer than that and the model fails to load.

The stubs import this module, so it imports nothing heavy.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

MARKER = "groupdiff-refusal"
TRITON_CODES = ("INVALID_ARG", "UNAVAILABLE", "INTERNAL")
_REFUSAL = re.compile(rf"{MARKER} ({'|'.join(TRITON_CODES)}) ([^\n]*)")
INTERNAL = ("INTERNAL", "internal: the groupdiff model failed; see the server log")
PYTRITON_MODEL = "pytriton_model.py"
HANDSHAKE_TIMEOUT_S = 120.0
ENTRY_POINT = f'''"""Model groupdiff: PyTriton's stub model answering refusals with Triton's error codes."""
import functools

from groupdiff.serving.pytriton_stub import HANDSHAKE_TIMEOUT_S, with_contract_errors

from . import {Path(PYTRITON_MODEL).stem} as pytriton_model

pytriton_model.get_config_from_handshake_server = functools.partial(
    pytriton_model.get_config_from_handshake_server, timeout_s=HANDSHAKE_TIMEOUT_S)
TritonPythonModel = with_contract_errors(pytriton_model.TritonPythonModel)
'''
LOG = logging.getLogger("groupdiff.serving.pytriton_stub")


class Refusal(Exception):
    """A refused request, raised by the frontend's inference callable: one marked line that survives PyTriton's
    traceback formatting."""

    def __init__(self, triton_code: str, message: str):
        if triton_code not in TRITON_CODES:
            raise ValueError(f"triton_code must be one of {TRITON_CODES}, got {triton_code!r}")
        super().__init__(f"{MARKER} {triton_code} {' '.join(message.split())}")


def find_refusal(text: str) -> tuple[str, str] | None:
    """(Triton code, message) of the last refusal in an error text, or None."""
    found = _REFUSAL.findall(text)
    return found[-1] if found else None


def with_contract_errors(model_class: type) -> type:
    """PyTriton's stub model class, with failed requests answered by `Refusal`'s code and message."""

    class TritonPythonModel(model_class):
        def execute(self, requests):
            import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend

            try:
                return super().execute(requests)
            except pb_utils.TritonModelException as error:
                refusal = find_refusal(str(error))
                if refusal is None:
                    LOG.error("model groupdiff failed: %s", error)
                code, message = refusal or INTERNAL
                error = pb_utils.TritonError(message, getattr(pb_utils.TritonError, code))
                return [pb_utils.InferenceResponse(error=error) for _ in requests]

    return TritonPythonModel


def install_entry_point(version_folder: Path) -> None:
    """Put the wrapper in front of the stub model PyTriton wrote into ``version_folder`` (``<store>/<model>/1``)."""
    (version_folder / "model.py").rename(version_folder / PYTRITON_MODEL)
    (version_folder / "model.py").write_text(ENTRY_POINT)
