#!/usr/bin/env bash
# Create the "Mirage Camera" virtual webcam on Linux (v4l2loopback) that Zoom, Meet and OBS list.
# Run once per boot (or add the options to /etc/modprobe.d to make it permanent).
set -euo pipefail
if ! modinfo v4l2loopback >/dev/null 2>&1; then
  echo "installing v4l2loopback (Debian/Ubuntu)..." >&2
  sudo apt-get install -y v4l2loopback-dkms v4l2loopback-utils
fi
sudo modprobe -r v4l2loopback 2>/dev/null || true
sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="Mirage Camera"
echo "ready: $(grep -l 'Mirage Camera' /sys/class/video4linux/*/name | sed 's#/sys/class/video4linux/#/dev/#; s#/name##')"
