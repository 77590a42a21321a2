# hookbus tasks. `just` is optional: each recipe is one command you can also type.

# Run the whole system on embedded NATS and Postgres (data in .hookbus/).
up *ARGS:
    uv run hookbus up {{ARGS}}

# The whole test suite (unit, integration, end to end) against real servers.
test *ARGS:
    uv run pytest {{ARGS}}

# Lint, format check and type check.
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# What CI runs.
ci:
    bash .ci/run

# Benchmarks (figures, not tests): see bench/README.md.
bench *ARGS:
    uv run python -m bench {{ARGS}}

# Run one service in the foreground: just serve receiver
serve SERVICE:
    uv run hookbus serve {{SERVICE}}
