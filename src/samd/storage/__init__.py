"""Storage backends: streaming get and put for local files, S3 and HTTPS (get only).

```python
with open_artifact("s3://models/fraud/v3.samd") as stream:   # or a path, file://, https://
    while chunk := stream.read(1 << 20):
        ...
put_artifact("s3://models/fraud/v3.samd", source, sse="aws:kms", kms_key_id="alias/models")
posture = check_bucket_posture("s3://models")                  # encryption on? public access blocked?
```

Transient failures (lost connections, timeouts, 5xx, throttling) are retried with exponential
backoff and jitter; anything else fails at once. Every failure is a `samd.errors.StorageError`
naming the URI and what to do, with ``transient=True`` when retrying later may help.
"""

from samd.storage.api import artifact_size, open_artifact, put_artifact
from samd.storage.posture import PUBLIC_ACCESS_BLOCK_FLAGS, BucketPosture, check_bucket_posture
from samd.storage.retry import DEFAULT_RETRY, RetryPolicy, TransientStorageError
from samd.storage.stream import ArtifactReader
from samd.storage.uri import ArtifactLocation, HttpUrl, LocalPath, S3Location, parse_artifact_uri, redact_url

__all__ = [
    "DEFAULT_RETRY",
    "PUBLIC_ACCESS_BLOCK_FLAGS",
    "ArtifactLocation",
    "ArtifactReader",
    "BucketPosture",
    "HttpUrl",
    "LocalPath",
    "RetryPolicy",
    "S3Location",
    "TransientStorageError",
    "artifact_size",
    "check_bucket_posture",
    "open_artifact",
    "parse_artifact_uri",
    "put_artifact",
    "redact_url",
]
