"""Result writers: the rq task recording terminal job results, and `worker-bridge`."""
