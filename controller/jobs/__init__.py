"""Job records, phases, the per-VM operation lock and cancellation (see controller.jobs.store)."""
