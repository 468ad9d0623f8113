"""helm test: the webhook answers /readyz over TLS, for its Service's DNS name, signed by its CA.

Settings (environment): SAMD_WEBHOOK_ADDRESS (host:port) or SAMD_WEBHOOK_SERVICE (the kubelet's
{SERVICE}_SERVICE_HOST/_PORT variables name its address); SAMD_WEBHOOK_SERVER_NAME (the name the
certificate must carry); SAMD_WEBHOOK_CA (a CA file) or SAMD_WEBHOOK_CA_PEM (the CA itself);
SAMD_WEBHOOK_ATTEMPTS (10, two seconds apart). Exit 0 when the webhook is ready, 1 with the reason
otherwise.
"""

import http.client
import os
import socket
import ssl
import sys
import time


def address() -> tuple[str, int]:
    given = os.environ.get("SAMD_WEBHOOK_ADDRESS")
    if given:
        host, _, port = given.rpartition(":")
        return host.strip("[]"), int(port)
    variable = os.environ["SAMD_WEBHOOK_SERVICE"].upper().replace("-", "_")
    return os.environ[f"{variable}_SERVICE_HOST"], int(os.environ.get(f"{variable}_SERVICE_PORT", "443"))


def main() -> int:
    host, port = address()
    server_name = os.environ["SAMD_WEBHOOK_SERVER_NAME"]
    pem = os.environ.get("SAMD_WEBHOOK_CA_PEM")
    context = ssl.create_default_context(
        cafile=None if pem else os.environ["SAMD_WEBHOOK_CA"], cadata=pem or None
    )
    problem = "no attempt"
    attempts = int(os.environ.get("SAMD_WEBHOOK_ATTEMPTS", "10"))
    for attempt in range(attempts):
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=context)
        try:
            # Connect to the address; verify the certificate for the Service's DNS name.
            connection.sock = context.wrap_socket(
                socket.create_connection((host, port), timeout=5), server_hostname=server_name
            )
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            if response.status == 200:
                sys.stdout.write(f"the webhook at {host}:{port} answers as {server_name}: ready\n")
                return 0
            problem = f"/readyz answered HTTP {response.status}: {response.read(200)!r}"
        except OSError as error:  # ssl.SSLError (a certificate the CA did not sign) is an OSError
            problem = str(error)
        finally:
            connection.close()
        if attempt + 1 < attempts:
            time.sleep(2)
    sys.stderr.write(f"the webhook at {host}:{port} ({server_name}) is not ready: {problem}\n")
    return 1


sys.exit(main())
