#!/bin/sh
# Example deploy script run by the executor for the "deploy-main" rule in hookbus.toml.
# The event's facts arrive as HOOKBUS_* environment variables; the webhook's JSON payload
# arrives on stdin. Whatever it prints is recorded in the job's event (see `hookbus events -v`).
set -eu
bytes=$(wc -c)
echo "deploying ${HOOKBUS_REPOSITORY:-?} branch ${HOOKBUS_BRANCH:-?} at ${HOOKBUS_COMMIT:-?}"
echo "pushed by ${HOOKBUS_SENDER:-?}; payload ${bytes} bytes; job ${HOOKBUS_JOB_ID}"
echo "webhook ${HOOKBUS_EVENT_ID} (delivery ${HOOKBUS_DELIVERY_ID:-none})"
