# Sourced by the scripts that run Windows builds under Wine (cross_windows.sh, windows_python.sh).
# wine: the Wine loader found here, or empty.
# in_wine PREFIX LABEL SECONDS COMMAND...: runs COMMAND under Wine in the Wine prefix PREFIX, of its own
# (made on first use, a few seconds), so a user's ~/.wine is never touched; of Wine's own notes only
# "wine: Unhandled ..." (a crash: the exception and its address) is kept, printed with the program's
# lines (stderr too) after "LABEL: "; returns the program's exit status, 70 where it crashed, or 124
# where it ran past SECONDS (stopped there, and said so). A crash is told by Wine's notes, not by the
# status: through a pipe, Wine 8 reports a crashed program's status as 0 as often as not (seen here with
# a NULL write, with and without other threads). Its debugger's report (the stack) follows the note,
# except where the crash is inside the process heap: the debugger's start faults there again and the
# program hangs until SECONDS (seen with a heap overwritten on purpose; and in CI, after an access
# violation that a Python's faulthandler printed).
wine=$(command -v wine64 || command -v wine || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)

in_wine() {
    local - prefix=$1 label=$2 seconds=$3 status how
    set +e  # here only (local -): the program's status is returned, not an exit on a filter's
    shift 3
    WINEPREFIX="$prefix" WINEDEBUG=-all timeout "$seconds" "$wine" "$@" 2>&1 |
        awk -v label="$label" '/^wine: Unhandled /{noted=1} /^wine: / && !/^wine: Unhandled /{next}
                               {print label ": " $0; fflush()} /^Unhandled exception: /{reported=1}
                               END{exit reported ? 3 : noted ? 4 : 0}'
    status=("${PIPESTATUS[@]}")
    if [ "${status[1]}" = 3 ]; then
        echo "$label: the program crashed (Wine's debugger's report above; Wine said exit status ${status[0]})"
        return 70
    fi
    if [ "${status[1]}" = 4 ]; then
        how="Wine said exit status ${status[0]}"
        [ "${status[0]}" = 124 ] &&
            how="it hung, as Wine does for a crash inside the process heap: stopped after $seconds s"
        echo "$label: the program crashed (Wine's note above), and Wine's debugger gave no report ($how)"
        return 70
    fi
    if [ "${status[0]}" = 124 ]; then
        echo "$label: stopped after $seconds s without an end (a hang; or a machine far slower than this limit allows)"
    fi
    return "${status[0]}"
}
