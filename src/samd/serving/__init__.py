"""Serving a verified model over mTLS on the Open Inference Protocol (KServe V2), REST.

`samd serve` runs a model in process (ONNX through onnxruntime; `runtimes` is the registry for
other formats); `samd proxy` puts the same front end before a model server of the user's own
(MLServer, Triton, KServe) that listens on localhost. Both:

- speak TLS 1.3 only and require a client certificate from the model's CA, whose organization is
  the model's and whose common name is an allowed client (else 403);
- limit each client with a token bucket (429 with Retry-After), limit body, batch and tensor sizes,
  and check every input against the model's declared names, datatypes and shapes (400);
- load only the files of the pinned, signed manifest (`model.load_verified_model`) and put the
  model's name, version, manifest digest and signer on every response;
- export Prometheus metrics on a separate plain-HTTP port, log one JSON line per refused request,
  and stop gracefully on SIGTERM.

Importing this package is cheap: onnxruntime, numpy and aiohttp are imported by the modules that
use them, and `samd fetch` never imports this package.
"""
