"""What every run (a search, a training) stands on:

    config      configuration dataclasses ← presets ← YAML ← flags, and the flags derived from them
    run_dir     the output folder: never overwritten silently, configuration and environment saved, resume checks
    epochs      the resumable epoch loop (progress, periodic checkpoints, sums over ranks, metrics)
    checkpoint  checkpoints written atomically and read with weights_only=True, RNG states
    distributed data parallelism under torchrun
    metrics     metrics.jsonl and the log line of an epoch, peak memory
    progress    a progress bar on interactive terminals
"""
