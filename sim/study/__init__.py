"""Studies: scenario files, runs, sweeps, replays, traces, backends, results, progress."""
