#!/bin/sh
# placeholder: written by the reliability work
echo "Tests/cli/run.sh: not written yet"
