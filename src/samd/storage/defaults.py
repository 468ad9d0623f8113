"""Default settings shared by the storage backends.

They live apart from the backends so that a caller can name a default without importing a
backend: the S3 one brings in boto3 and botocore (about 16 MiB and 0.3 s), which a fetch from a
local file never needs.
"""

from __future__ import annotations

NETWORK_TIMEOUT = 60.0
"""Seconds to wait to connect, or for the next bytes of an answer, before the attempt fails."""

S3_PART_SIZE = 8 << 20
"""Bytes per part of a multipart upload."""

S3_CONCURRENCY = 4
"""Parts uploaded at once."""
