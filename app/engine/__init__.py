"""The job engine: queues, workers and lifecycle, job bookkeeping and handlers."""
