#!/bin/bash
# Container HEALTHCHECK for banditd: HTTP GET /metrics on the metrics port (from
# BANDITD_METRICS_ADDR, default 9464) over bash's /dev/tcp, healthy on "HTTP/1.x 200".
# No curl or wget in the image. Exit 0 healthy, 1 not. Tested by tests/prometheus.rs.
set -u
port="${BANDITD_METRICS_ADDR:-0.0.0.0:9464}"
port="${port##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" 2>/dev/null || { echo "metrics port ${port} refused"; exit 1; }
printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t 2 status <&3 || { echo "no answer on port ${port}"; exit 1; }
exec 3<&-
case "$status" in
    "HTTP/1."[01]" 200"*) exit 0 ;;
    *) echo "unexpected status: ${status}"; exit 1 ;;
esac
