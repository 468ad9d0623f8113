"""The steps of one SecureModel's reconcile, one module per concern.

Each step is a small class that holds only its own per-model cache and takes the reconcile's
`Run` (and the `ModelContext` once verification has run): `verification`, `keys` (and rotation),
`storage` (the bucket's posture), `certificates`, `owned` (apply and prune the owned objects),
`serving` (the Serving condition from the Deployment's rollout). `shared` holds what they all use.
`samd.operator.reconcile.Reconciler` runs them in order.
"""
