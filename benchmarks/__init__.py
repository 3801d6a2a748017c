"""Former home of the peer comparison and the GPU check, now ``sigsim peers`` and
``sigsim gpu-check`` (:mod:`experiments.peers`, :mod:`experiments.gpu_check`); the modules
left here only name the new command."""
