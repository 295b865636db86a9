#!/bin/sh
# tools/test_summary.sh LOG - the closing line of every test runner in a
# `make test` log (swift test, the C suites, pytest, the VBMI checks, the
# command's tests, the wheel test, fuzzing), one line each, at the end of
# the run. Exit status 1 when swift test (which runs behind a pipe) or
# anything else reported a failure in the log.
log=${1:?usage: sh tools/test_summary.sh LOG}
echo
echo "== summary =="
grep -E '^[A-Za-z0-9_-]+: [0-9]+ passed, [0-9]+ failed$|^[0-9]+ passed, [0-9]+ failed$|Executed [0-9]+ tests?, with .*failures?|Test run with [0-9]+ tests?|^=+ .*(passed|failed|error).* =+$|^[0-9]+ (passed|failed)' "$log" \
    | sed 's/^[[:space:]]*/  /' || echo "  (no summary lines found)"
if grep -Eq '^error: |Executed [0-9]+ tests?, with (.* and )?[1-9][0-9]* failures?|Test run with .* failed|^[A-Za-z0-9_-]*:? ?[0-9]+ passed, [1-9][0-9]* failed$' "$log"; then
    echo "== a suite reported failures =="
    exit 1
fi
exit 0
