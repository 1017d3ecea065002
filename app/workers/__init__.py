"""Background workers: the outbox dispatcher, the inbox processor and the reconciler.

They run inside the service process by default (started by the lifespan) and are safe to run in
any number of replicas at once: every claim is a lease taken with ``FOR UPDATE SKIP LOCKED``.
"""
