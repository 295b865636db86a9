#!/bin/sh
# placeholder: written by the reliability work
echo "tools/valgrind.sh: not written yet"
