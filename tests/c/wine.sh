# Sourced by the scripts that run Windows builds under Wine (cross_windows.sh, windows_python.sh).
# wine: the Wine loader found here, or empty.
# in_wine PREFIX LABEL SECONDS COMMAND...: runs COMMAND under Wine in the Wine prefix PREFIX, of its own
# (made on first use, a few seconds), so a user's ~/.wine is never touched; Wine's own notes are dropped,
# the program's lines (stderr too) printed after "LABEL: "; returns the program's exit status, 70 where
# it crashed, or 124 where it ran past SECONDS (stopped, and said so: a program that crashes holding the
# heap's lock can hang where Wine starts its debugger, a Python's faulthandler having printed an access
# violation just before). A crash is told by the report of Wine's debugger ("Unhandled exception: ...", the
# program's stack after it), not by the status: through a pipe, Wine 8 reports a crashed program's
# status as 0 as often as not (seen here with a NULL write, with and without other threads).
wine=$(command -v wine64 || command -v wine || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)

in_wine() {
    local - prefix=$1 label=$2 seconds=$3 status
    set +e  # here only (local -): the program's status is returned, not an exit on a filter's
    shift 3
    WINEPREFIX="$prefix" WINEDEBUG=-all timeout "$seconds" "$wine" "$@" 2>&1 |
        awk -v label="$label" '/^wine: /{next} {print label ": " $0; fflush()} /^Unhandled exception: /{crashed=1}
                               END{exit crashed ? 3 : 0}'
    status=("${PIPESTATUS[@]}")
    if [ "${status[1]}" = 3 ]; then
        echo "$label: the program crashed (Wine's debugger's report above; Wine said exit status ${status[0]})"
        return 70
    fi
    if [ "${status[0]}" = 124 ]; then
        echo "$label: stopped after $seconds s without an end (a hang; or a machine far slower than this limit allows)"
    fi
    return "${status[0]}"
}
