"""A submitted job: record, registry, phases, failure causes, state, watching."""
