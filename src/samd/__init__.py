"""SAMD: Secure AI Model Deployment.

The core package: model signing and verification, streaming envelope
encryption, key providers, storage backends and the typed spec models. It makes
no Kubernetes calls; the operator and the webhook (``samd.operator``,
``samd.webhook``) build on it.
"""

__version__ = "0.1.0"
