#!/bin/sh
# placeholder: written by the reliability work
echo "tools/fuzz.sh: not written yet"
