# Sourced by the scripts that run Windows builds under Wine (cross_windows.sh, windows_python.sh).
# wine: the Wine loader found here, or empty.
# in_wine PREFIX LABEL SECONDS COMMAND...: runs COMMAND under Wine in the Wine prefix PREFIX, of its own
# (made on first use, a few seconds), so a user's ~/.wine is never touched; Wine's own notes are dropped,
# the program's lines (stderr too) printed after "LABEL: "; returns the program's exit status.
wine=$(command -v wine64 || command -v wine || { [ -x /usr/lib/wine/wine64 ] && echo /usr/lib/wine/wine64; } || true)

in_wine() {
    local - prefix=$1 label=$2 seconds=$3
    set +e  # here only (local -): the program's status is returned, not an exit on a filter's
    shift 3
    WINEPREFIX="$prefix" WINEDEBUG=-all timeout "$seconds" "$wine" "$@" 2>&1 | grep -v '^wine: ' | sed "s/^/$label: /"
    return "${PIPESTATUS[0]}"
}
