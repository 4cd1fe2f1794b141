#!/bin/sh
# Create the virtual Pi's GPIO header: one gpio-sim chip with 28 lines (BCM 0..27), through configfs.
# Tests drive inputs (buttons) from outside with /sys/devices/platform/gpio-sim.*/gpiochipN/sim_gpioK/pull
# and read outputs (LEDs) with libgpiod tools or sim_gpioK/value.
set -eu
modprobe gpio-sim
cfg=/sys/kernel/config/gpio-sim/vpi
if [ ! -d "$cfg" ]; then
    mkdir "$cfg"
    mkdir "$cfg/bank0"
    echo 28 >"$cfg/bank0/num_lines"
    echo vpi-header >"$cfg/bank0/label"
fi
echo 1 >"$cfg/live"
chip=$(cat "$cfg/bank0/chip_name")
# Buttons are wired to ground with a pull-up, as on the robot: every line idles high (not pressed).
for sim in /sys/devices/platform/"$(cat "$cfg/dev_name")"/"$chip"/sim_gpio*; do
    echo pull-up >"$sim/pull"
done
# The appliance's gpio group may use it (as Raspberry Pi OS's udev rules do for the real header).
chgrp gpio "/dev/$chip" 2>/dev/null || true
chmod 0660 "/dev/$chip"
echo "gpio-sim: $chip ($(cat "$cfg/dev_name"))"
