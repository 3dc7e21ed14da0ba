#!/usr/bin/env bash
# Provisioning a board (wheel, venv, config, keys, systemd unit, udev rule) is not yet implemented.
echo "flash.sh: not yet — see the README for running the agent by hand" >&2
exit 2
