"""hookbus benchmarks: figures against the machine's own ceilings, measured in one run."""
