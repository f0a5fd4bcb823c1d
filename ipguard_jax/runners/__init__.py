"""How :func:`ipguard_jax.generate` drives the compiled optimiser over many candidates.

============================  =================================================================
module                        what it holds
============================  =================================================================
``programs``                  the compiled pieces: start a batch, advance it (unrolled steps),
                              finish it, a whole chunk in one ``lax.while_loop``, refill and
                              shrink a working batch
``chunked``                   consecutive chunks; each runs until all its points stop (the
                              device loop, or host-driven blocks on CPU); CW's search over ``c``
``compacted``                 one working batch whose finished points are swapped for fresh
                              candidates every few steps, driven from the host
``device_compacted``          the same inside one compiled loop, refilling a few finished slots
                              at a time (the GPU/TPU default)
``collector``                 finished candidates and the rule that stops the run
``checkpoint``                resuming a killed run from an orbax directory, checked on load
``run``                       what one run's runners share (:class:`~ipguard_jax.runners.run.Run`)
============================  =================================================================

Nothing here is needed to use the library; it is where to look to change how runs execute.

Example:
    >>> from ipguard_jax.runners.compacted import shrunk_size
    >>> shrunk_size(16, 5, 1)
    8
"""
