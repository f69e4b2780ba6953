"""Webhooks: session and account events, signed in the Standard Webhooks format and
delivered at least once.

- The scripts that change sessions and accounts queue each event in the same step, in an
  outbox stream of their own slot (`emit` in store/lua/_lib.lua), and ring a doorbell.
- `outbox.Outbox` reads those streams through one consumer group, so that instances share
  the work and an event goes to one of them; entries stay pending until delivered.
- `worker.WebhookWorker` delivers, retries with backoff and jitter, and hands back what it
  holds when it stops, so that another instance (or its own restart) carries on.
"""
