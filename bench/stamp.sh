#!/bin/bash
# The action of the end-to-end and peer benches: write when it started, nothing else.
# $HOOKBUS_DELIVERY_ID comes from hookbus's job context, or from adnanh/webhook's
# pass-environment-to-command (the X-GitHub-Delivery header); $BENCH_STAMPS is the file.
printf '%s %s\n' "$HOOKBUS_DELIVERY_ID" "$EPOCHREALTIME" >> "$BENCH_STAMPS"
