# Shared by the results scripts of issue 12's rounds (bench/results/issue12-r*/run.sh),
# sourced after BENCH is set:
#   run NAME ARGS...  runs `$BENCH ARGS... --out <tmp>` and writes NAME.log (the commit, the
#                     date, the exact command, then its output) and NAME.json (the report)
#                     into the calling script's folder;
#   want NAME         whether NAME was asked for on the command line (all when none was).
DIR=$(cd "$(dirname "$0")" && pwd)
COMMIT=$(git rev-parse --short HEAD)

run() {
    name=$1
    shift
    out=$(mktemp -d)
    {
        echo "# commit $COMMIT; $(date -u +%FT%TZ); $(nproc) CPUs"
        echo "# $BENCH $* --out $out"
    } >"$DIR/$name.log"
    "$BENCH" "$@" --out "$out" >>"$DIR/$name.log" 2>&1 || echo "# exit $?" >>"$DIR/$name.log"
    cp "$out"/report-*.json "$DIR/$name.json" 2>/dev/null || true
    rm -rf "$out"
}

want() { [ -z "$ARGS" ] || case " $ARGS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ARGS="$*"
