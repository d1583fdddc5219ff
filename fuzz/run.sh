#!/usr/bin/env bash
# Coverage-guided fuzzing of Porthole with atheris (libFuzzer), in its own venv.
#
#   fuzz/run.sh TARGET [SECONDS] [--merge] [-- LIBFUZZER_ARGS...]   fuzz for SECONDS (default 60)
#   fuzz/run.sh TARGET --replay FILE...                               run inputs once (a crash, a seed)
#   fuzz/run.sh TARGET --minimize FILE                                shrink a crashing input
#
# TARGET: canonical (canonicalize_target + decide, porthole.core) or request (a client byte stream
# through a real porthole Proxy). The run reads fuzz/corpus/TARGET/ and writes the new inputs it
# finds to fuzz/scratch/TARGET/ (not the repository corpus); --merge then adds to
# fuzz/corpus/TARGET/ a small set of scratch inputs that cover edges the corpus does not. Crashes land in
# fuzz/crashes/ (scratch/ and crashes/ are ignored by git). The log of the run is
# fuzz/scratch/TARGET.log. FUZZ_JOBS=N runs N fuzzing processes in parallel (default 1).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

usage() { sed -n '3,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
target="$1"; shift
case "$target" in
    canonical) max_len=1024 ;;
    request) max_len=8192 ;;
    -h|--help) usage ;;
    *) echo "fuzz/run.sh: unknown target '$target' (canonical or request)" >&2; exit 2 ;;
esac

mode=fuzz seconds=60 merge=0 extra=() files=()
while [ $# -gt 0 ]; do
    case "$1" in
        --merge) merge=1 ;;
        --replay|--minimize)
            mode="${1#--}"; shift
            for f in "$@"; do files+=("$(realpath -e -- "$f")"); done
            break ;;
        --) shift; extra=("$@"); break ;;
        ''|*[!0-9]*) echo "fuzz/run.sh: unexpected argument '$1'" >&2; usage ;;
        *) seconds="$1" ;;
    esac
    shift
done
cd "$repo"

# The fuzzing venv: Debian's python3 (3.11; atheris ships a manylinux wheel with libFuzzer built
# in, so no clang is needed), packages pinned with hashes in requirements-fuzz.txt.
venv="$repo/.venv-fuzz"
python="${PYTHON:-/usr/bin/python3}"
stamp="$venv/.requirements-fuzz.sha256"
want="$(sha256sum requirements-fuzz.txt | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "fuzz/run.sh: creating $venv from requirements-fuzz.txt" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --require-hashes --only-binary=:all: --no-deps -r requirements-fuzz.txt
    echo "$want" > "$stamp"
fi

corpus="$here/corpus/$target"
scratch="$here/scratch/$target"
crashes="$here/crashes"
mkdir -p "$scratch" "$crashes"
export PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
harness=("$venv/bin/python" "$here/fuzz_$target.py")
cd "$here/scratch"  # libFuzzer writes -jobs logs (fuzz-N.log) to the current directory

case "$mode" in
    replay)
        [ ${#files[@]} -gt 0 ] || usage
        exec "${harness[@]}" -runs=1 "${files[@]}"
        ;;
    minimize)
        [ ${#files[@]} -eq 1 ] || usage
        exec "${harness[@]}" -minimize_crash=1 -max_total_time=120 -runs=100000 \
            -artifact_prefix="$crashes/$target-" "${files[0]}"
        ;;
esac

jobs="${FUZZ_JOBS:-1}"
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
log="$here/scratch/$target.log"
echo "fuzz/run.sh: $target for ${seconds}s, corpus $corpus, new inputs -> $scratch, crashes -> $crashes/, log $log" >&2
status=0
"${harness[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -dict="$here/$target.dict" -artifact_prefix="$crashes/$target-" -print_final_stats=1 \
    "${parallel[@]}" "${extra[@]}" "$scratch" "$corpus" 2>&1 | tee "$log" || status=$?
if [ "$status" -eq 0 ] && [ "$merge" -eq 1 ]; then
    echo "fuzz/run.sh: merging new coverage from $scratch into $corpus" >&2
    # edges only (no hit-count buckets) and a set cover: a handful of files, not hundreds
    "${harness[@]}" -set_cover_merge=1 -use_counters=0 -max_len="$max_len" "$corpus" "$scratch"
fi
exit "$status"
