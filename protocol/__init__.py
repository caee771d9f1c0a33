"""The wire contract of `/v1/generate` and the Triton model ``groupdiff``, written once.

Request and response schemas, their limits and defaults, the error codes with their HTTP statuses, and the
Triton tensor names: what both servers check and answer, and what both clients send and read. Pydantic only
(no torch, no numpy), so the SDK installs and imports without the model.
"""
