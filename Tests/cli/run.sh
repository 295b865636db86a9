#!/bin/sh
# Tests/cli/run.sh QEMBED_BINARY - the qembed command end to end (`make test-cli`).
#
# Generates its inputs (Tests/cli/cli_inputs.py, python3 + numpy: a .npy table
# and a multi-tensor .safetensors state dict), then runs
#   quantize (nf4, fp4, int8, blockwise8, --compress-statistics, --blocksize,
#   --tensor) -> inspect -> lookup (values checked against the original table
#   within each type's error bound), the error cases and their exit statuses
#   (0 success, 1 failure with "qembed: <message>" on stderr, 2 usage error),
#   consolidate (a row-sharded checkpoint into one file, byte for byte),
#   --help and `demo --quick`; data safety (the input and existing outputs are
#   never replaced without --force, SIGINT/SIGTERM leave no temporary file).
# Each check prints one line; the last line is "N passed, M failed" and the
# exit status is 1 when anything failed.
set -u
Q=${1:?usage: sh Tests/cli/run.sh path/to/qembed-cli}
case "$Q" in /*) ;; *) Q=$(pwd)/$Q ;; esac
here=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/qembed-cli-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAILED $*"; }
# show the last command's output (indented) after a failure
show() {
    sed -n '1,12s/^/    stdout: /p' "$work/out"
    sed -n '1,12s/^/    stderr: /p' "$work/err"
}

# run ARGS...: the command's status in $rc, its output in $work/out and $work/err
run() {
    "$Q" "$@" > "$work/out" 2> "$work/err"
    rc=$?
}

# expect STATUS DESCRIPTION ARGS...: run and check the exit status; a status 1
# must come with a "qembed: " message on stderr, a status 2 with some message.
expect() {
    want=$1
    desc=$2
    shift 2
    run "$@"
    if [ "$rc" -ne "$want" ]; then
        fail "$desc: exit status $rc, want $want (qembed $*)"
        show
        return 1
    fi
    if [ "$want" -eq 1 ] && ! grep -q '^qembed: ..*' "$work/err"; then
        fail "$desc: exit status 1 without a \"qembed: <message>\" line on stderr"
        show
        return 1
    fi
    if [ "$want" -eq 2 ] && [ ! -s "$work/err" ]; then
        fail "$desc: usage error (status 2) with nothing on stderr"
        return 1
    fi
    ok "$desc (exit $rc)"
    return 0
}

# has FILE TEXT DESCRIPTION: FILE holds the fixed string TEXT
has() {
    if grep -qF -- "$2" "$1"; then
        ok "$3"
    else
        fail "$3: \"$2\" not in the output"
        sed -n '1,25s/^/    /p' "$1"
    fi
}

# rows DESCRIPTION MODE ORIG TENSOR [BLOCKSIZE [QFILE]]: the last lookup's rows vs the original
rows() {
    desc=$1
    shift
    if "$PYTHON" "$here/cli_inputs.py" rows "$1" "$2" "$3" "$work/out" ${4:+"$4"} ${5:+"$5"} > "$work/cmp" 2>&1; then
        ok "$desc: $(cat "$work/cmp")"
    else
        fail "$desc: $(cat "$work/cmp")"
    fi
}

t0=$(date +%s)
if [ ! -x "$Q" ]; then
    fail "$Q is not an executable"
    echo "$passed passed, $failed failed"
    exit 1
fi
if "$PYTHON" "$here/cli_inputs.py" make "$work" > "$work/gen.log" 2>&1; then
    ok "inputs: table.npy (200x64 f32), multi.safetensors (5 tensors: f32/f16/bf16/i64), ints.npy"
else
    fail "generating the inputs with $PYTHON:"
    sed 's/^/    /' "$work/gen.log"
    echo "$passed passed, $failed failed"
    exit 1
fi
T=$work/table.npy
M=$work/multi.safetensors
W=embeddings.word_embeddings.weight
P=embeddings.position_embeddings.weight

# ---- help and usage -------------------------------------------------------
expect 0 "--help" --help && has "$work/out" "USAGE" "--help prints the usage"
expect 0 "quantize --help" quantize --help && has "$work/out" "--compress-statistics" "quantize --help lists --compress-statistics"
expect 2 "no arguments is a usage error" 
expect 2 "unknown subcommand" frobnicate
expect 2 "quantize without arguments" quantize
expect 2 "lookup without row ids" lookup "$T"

# ---- the float inputs themselves -------------------------------------------
expect 0 "inspect table.npy" inspect "$T" && has "$work/out" "array" "inspect table.npy lists the tensor \"array\""
expect 0 "inspect multi.safetensors" inspect "$M"
for name in "$W" "$P" embeddings.token_type_embeddings.weight embeddings.LayerNorm.weight position_ids; do
    has "$work/out" "$name" "inspect multi.safetensors lists $name"
done
has "$work/out" "format = pt" "inspect multi.safetensors shows the metadata"
expect 0 "lookup rows of table.npy" lookup "$T" 0 7 199 && rows "lookup table.npy prints the stored rows" exact "$T" -
expect 0 "lookup --tensor $W of the float state dict" lookup "$M" 3 299 --tensor "$W" &&
    rows "lookup of a float tensor prints the stored rows" exact "$M" "$W"

# ---- quantize -> inspect -> lookup -----------------------------------------
# quantize_case DESCRIPTION OUTFILE MODE BLOCKSIZE TENSOR|- INPUT ARGS...
# A .npy holds one tensor named "array": the quantized layer is stored under
# that prefix (lookup --tensor weight).
for spec in "nf4 64" "fp4 64" "int8 -" "blockwise8 4096"; do
    set -- $spec
    type=$1
    bs=$2
    out=$work/t_$type.safetensors
    if expect 0 "quantize table.npy --type $type" quantize "$T" -o "$out" --type "$type"; then
        has "$work/out" "error: max abs" "quantize --type $type reports the error"
        expect 0 "inspect the $type file" inspect "$out"
        case $type in
        nf4 | fp4)
            for s in "weight  " weight.absmax weight.quant_map "weight.quant_state.bitsandbytes__$type"; do
                has "$work/out" "$s" "inspect $type lists $s"
            done
            has "$work/out" "quant_state: {\"quant_type\": \"$type\", \"blocksize\": 64" "inspect $type prints the quant_state JSON"
            has "$work/out" "layer \"weight\": $type 200 x 64, blocksize 64" "inspect $type describes the layer"
            ;;
        int8)
            has "$work/out" "weight.SCB" "inspect int8 lists weight.SCB"
            has "$work/out" "layer \"weight\": int8 200 x 64" "inspect int8 describes the layer"
            ;;
        blockwise8)
            has "$work/out" "qembed.layer = Blockwise8" "inspect blockwise8 shows its metadata"
            has "$work/out" "weight.absmax" "inspect blockwise8 lists weight.absmax"
            ;;
        esac
        if expect 0 "lookup --tensor weight in the $type file" lookup "$out" 0 1 100 199 --tensor weight; then
            if [ "$type" = blockwise8 ]; then
                rows "$type lookup within the error bound" "$type" "$T" - "$bs" "$out"
            else
                rows "$type lookup within the error bound" "$type" "$T" - "$bs"
            fi
        fi
    fi
done
# lookup's help: "Tensor / layer prefix (default: "weight" or the only table)"
expect 0 "lookup without --tensor in a file holding one quantized table (nf4, \"weight\")" lookup "$work/t_nf4.safetensors" 0 1 &&
    rows "lookup of the only table within the error bound" nf4 "$T" - 64

out=$work/t_nf4_nested.safetensors
if expect 0 "quantize --type nf4 --compress-statistics --blocksize 128" \
    quantize "$T" -o "$out" --type nf4 --compress-statistics --blocksize 128; then
    expect 0 "inspect the nested nf4 file" inspect "$out"
    has "$work/out" "weight.nested_absmax" "inspect nested lists weight.nested_absmax"
    has "$work/out" "weight.nested_quant_map" "inspect nested lists weight.nested_quant_map"
    has "$work/out" "\"nested_blocksize\": 256" "inspect nested prints nested_blocksize in the quant_state"
    has "$work/out" "blocksize 128, nested statistics" "inspect nested describes the layer"
    expect 0 "lookup the nested nf4 file" lookup "$out" 0 5 199 --tensor weight && rows "nested nf4 (blocksize 128) lookup within the bound" nf4 "$T" - 128
fi
out=$work/t_fp4_4096.safetensors
expect 0 "quantize --type fp4 --blocksize 4096 --compress-statistics" \
    quantize "$T" -o "$out" --type fp4 --blocksize 4096 --compress-statistics &&
    expect 0 "lookup fp4 blocksize 4096" lookup "$out" 2 150 --tensor weight && rows "fp4 blocksize 4096 lookup within the bound" fp4 "$T" - 4096
out=$work/t_bw8_128.safetensors
expect 0 "quantize --type blockwise8 --blocksize 128" quantize "$T" -o "$out" --type blockwise8 --blocksize 128 &&
    expect 0 "lookup blockwise8 blocksize 128" lookup "$out" 9 10 --tensor weight &&
    rows "blockwise8 blocksize 128 lookup within the bound" blockwise8 "$T" - 128 "$out"

# one tensor out of a multi-tensor state dict, stored under its own name
out=$work/word_nf4.safetensors
if expect 0 "quantize --tensor $W (nf4) out of a 5-tensor file" quantize "$M" -o "$out" --type nf4 --tensor "$W"; then
    has "$work/out" "[$W]" "quantize names the chosen tensor"
    expect 0 "inspect the --tensor nf4 file" inspect "$out"
    has "$work/out" "$W.quant_state.bitsandbytes__nf4" "inspect lists $W.quant_state.bitsandbytes__nf4"
    has "$work/out" "layer \"$W\": nf4 300 x 64" "inspect describes the layer under its prefix"
    expect 0 "lookup --tensor $W in the nf4 file" lookup "$out" 0 150 299 --tensor "$W" &&
        rows "nf4 --tensor lookup within the bound" nf4 "$M" "$W" 64
    expect 1 "lookup row 300 of 300 (nf4)" lookup "$out" 300 --tensor "$W"
fi
out=$work/word_int8.safetensors
expect 0 "quantize --tensor $W (int8)" quantize "$M" -o "$out" --type int8 --tensor "$W" &&
    expect 0 "lookup --tensor $W in the int8 file" lookup "$out" 1 298 --tensor "$W" &&
    rows "int8 --tensor lookup within the bound" int8 "$M" "$W"
out=$work/pos_int8.safetensors
expect 0 "quantize --tensor $P (an f16 table, int8)" quantize "$M" -o "$out" --type int8 --tensor "$P" &&
    expect 0 "lookup the f16-sourced int8 file" lookup "$out" 0 39 --tensor "$P" &&
    rows "int8 of an f16 table within the bound" int8 "$M" "$P"
out=$work/tok_fp4.safetensors
expect 0 "quantize --tensor (a bf16 table, fp4 blocksize 32)" quantize "$M" -o "$out" --type fp4 --blocksize 32 \
    --tensor embeddings.token_type_embeddings.weight &&
    expect 0 "lookup the bf16-sourced fp4 file" lookup "$out" 0 1 --tensor embeddings.token_type_embeddings.weight &&
    rows "fp4 of a bf16 table within the bound" fp4 "$M" embeddings.token_type_embeddings.weight 32

# ---- errors ---------------------------------------------------------------
expect 1 "quantize a missing input file" quantize "$work/nope.npy" -o "$work/x.safetensors" --type nf4
expect 1 "inspect a missing file" inspect "$work/nope.safetensors"
expect 1 "lookup in a missing file" lookup "$work/nope.safetensors" 0

head -c 100 "$M" > "$work/truncated.safetensors"
expect 1 "quantize a truncated safetensors file" quantize "$work/truncated.safetensors" -o "$work/x.safetensors" --type int8 &&
    has "$work/err" "truncated.safetensors" "the truncated-file message names the file"
expect 1 "inspect a truncated safetensors file" inspect "$work/truncated.safetensors"
expect 1 "lookup in a truncated safetensors file" lookup "$work/truncated.safetensors" 0
sz=$(wc -c < "$work/t_nf4.safetensors")
head -c $((sz - 10)) "$work/t_nf4.safetensors" > "$work/truncated_nf4.safetensors"
expect 1 "lookup in a truncated quantized file" lookup "$work/truncated_nf4.safetensors" 0
head -c 90 "$T" > "$work/truncated.npy"
expect 1 "quantize a truncated .npy" quantize "$work/truncated.npy" -o "$work/x.safetensors" --type nf4
printf 'this is not a tensor file at all' > "$work/garbage.safetensors"
expect 1 "inspect a text file named .safetensors" inspect "$work/garbage.safetensors"

run quantize "$M" -o "$work/x.safetensors" --type nf4 --tensor no.such.tensor
if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then
    if grep -q 'no\.such\.tensor' "$work/err"; then
        ok "quantize --tensor no.such.tensor fails (exit $rc) naming the tensor"
    else
        fail "quantize --tensor no.such.tensor: the message does not name the tensor"
        show
    fi
else
    fail "quantize --tensor no.such.tensor: exit status $rc, want 1 or 2"
    show
fi
run lookup "$work/word_nf4.safetensors" 0 --tensor missing.prefix
if { [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; } && grep -q 'missing\.prefix' "$work/err"; then
    ok "lookup --tensor missing.prefix fails (exit $rc) naming the tensor"
else
    fail "lookup --tensor missing.prefix: exit status $rc (want 1 or 2) and a message naming it"
    show
fi
expect 2 "quantize a multi-tensor file without --tensor" quantize "$M" -o "$work/x.safetensors" --type nf4 &&
    has "$work/err" "--tensor" "the message asks for --tensor" &&
    if grep -q "position_ids\|LayerNorm" "$work/err"; then fail "the candidates list shows 1-D or integer tensors"; show; else ok "the candidates are the 2-D float tensors only"; fi

# ---- a model is more than its table: --keep-others, several tables, --name --
if expect 0 "quantize --keep-others (one table of a state dict)" quantize "$M" -o "$work/kept.safetensors" --type nf4 \
        --tensor embeddings.word_embeddings.weight --keep-others; then
    if $PYTHON "$here/cli_inputs.py" kept "$M" "$work/kept.safetensors" embeddings.word_embeddings.weight > "$work/kept.txt"; then
        ok "--keep-others: $(cat "$work/kept.txt")"
    else fail "--keep-others: $(cat "$work/kept.txt")"; fi
    expect 0 "lookup the quantized table inside the kept model" lookup "$work/kept.safetensors" 0 299 --tensor embeddings.word_embeddings.weight &&
        rows "kept model: the quantized table's rows within the nf4 bound" nf4 "$M" embeddings.word_embeddings.weight 64
fi
if expect 0 "quantize two tables by glob, --keep-others" quantize "$M" -o "$work/kept2.safetensors" --type int8 \
        --tensor 'embeddings.*_embeddings.weight' --keep-others; then
    if $PYTHON "$here/cli_inputs.py" kept "$M" "$work/kept2.safetensors" \
            embeddings.word_embeddings.weight,embeddings.position_embeddings.weight,embeddings.token_type_embeddings.weight > "$work/kept.txt"; then
        ok "glob --keep-others: $(cat "$work/kept.txt")"
    else fail "glob --keep-others: $(cat "$work/kept.txt")"; fi
fi
expect 0 "without --keep-others the output says what it left out" quantize "$M" -o "$work/only.safetensors" --type nf4 \
    --tensor embeddings.word_embeddings.weight && has "$work/out" "--keep-others copies them" "the note names --keep-others"
expect 2 "--name with two tables" quantize "$M" -o "$work/x.safetensors" --type nf4 --tensor 'embeddings.*_embeddings.weight' --name emb
expect 2 "--name with --keep-others" quantize "$M" -o "$work/x.safetensors" --type nf4 --tensor embeddings.word_embeddings.weight --keep-others --name emb
expect 1 "--tensor matching nothing" quantize "$M" -o "$work/x.safetensors" --type nf4 --tensor 'decoder.*' &&
    has "$work/err" "no tensor" "the message says nothing matched"
if expect 0 "quantize --name emb" quantize "$T" -o "$work/named.safetensors" --type nf4 --name emb; then
    expect 0 "inspect shows the layer under its --name" inspect "$work/named.safetensors" && has "$work/out" "emb.quant_state.bitsandbytes__nf4" "the layer is stored as emb"
fi
# Python loads the command's output with no name given (the file's only layer)
if PYTHONPATH="$here/../../bindings/python" $PYTHON -c "
import sys, numpy as np
from qembed.nn import EmbeddingNF4
a = EmbeddingNF4.load(sys.argv[1]); b = EmbeddingNF4.load(sys.argv[2]); c = EmbeddingNF4.load(sys.argv[3], prefix='emb')
assert a.num_embeddings == 200 and b.num_embeddings == 200 and np.array_equal(b(np.arange(200)), c(np.arange(200)))
" "$work/t_nf4.safetensors" "$work/named.safetensors" "$work/named.safetensors" > "$work/out" 2> "$work/err"; then
    ok "Python loads the command's output with no name (weight; emb)"
else fail "Python could not load the command's output without a name"; show; fi
# a file with no table says why, with the right exit status
$PYTHON -c "import numpy as np, sys; np.save(sys.argv[1], np.zeros((4, 3))); np.save(sys.argv[2], np.zeros(5, np.float32))" "$work/f64.npy" "$work/vec.npy"
expect 1 "quantize a float64 .npy says it is float64" quantize "$work/f64.npy" -o "$work/x.safetensors" --type nf4 &&
    has "$work/err" "F64" "the message names the dtype"
run quantize "$work/ints.npy" -o "$work/x.safetensors" --type int8
if [ "$rc" -eq 1 ] || [ "$rc" -eq 2 ]; then ok "quantize a file without a float table fails (exit $rc)"; else fail "quantize ints.npy: exit status $rc, want 1 or 2"; show; fi
expect 1 "quantize --tensor array of an int32 .npy" quantize "$work/ints.npy" -o "$work/x.safetensors" --type int8 --tensor array &&
    has "$work/err" "I32" "the message names the dtype"
expect 1 "quantize an i64 tensor" quantize "$M" -o "$work/x.safetensors" --type int8 --tensor position_ids

expect 2 "unsupported --type q3" quantize "$T" -o "$work/x.safetensors" --type q3 &&
    has "$work/err" "q3" "the --type message names the value"
expect 2 "--blocksize 100 for nf4" quantize "$T" -o "$work/x.safetensors" --type nf4 --blocksize 100
expect 2 "--blocksize 16 for fp4" quantize "$T" -o "$work/x.safetensors" --type fp4 --blocksize 16
expect 2 "--blocksize 8192 for nf4" quantize "$T" -o "$work/x.safetensors" --type nf4 --blocksize 8192
expect 2 "--blocksize for int8" quantize "$T" -o "$work/x.safetensors" --type int8 --blocksize 64
expect 2 "--compress-statistics for int8" quantize "$T" -o "$work/x.safetensors" --type int8 --compress-statistics
expect 2 "--blocksize 0 for blockwise8" quantize "$T" -o "$work/x.safetensors" --type blockwise8 --blocksize 0
expect 2 "quantize without --type" quantize "$T" -o "$work/x.safetensors"
expect 2 "quantize without -o" quantize "$T" --type nf4
[ -e "$work/x.safetensors" ] && fail "a failed quantize created $work/x.safetensors" || ok "no failed quantize wrote an output file"

expect 1 "output in a missing directory" quantize "$T" -o "$work/no/such/dir/out.safetensors" --type nf4
if [ -e "$work/no" ]; then fail "the missing output directory was created"; else ok "nothing created for the missing directory"; fi

# a failed quantize over an existing output leaves it intact (atomic writes)
cp "$work/t_int8.safetensors" "$work/keep.safetensors"
expect 1 "quantize a truncated input over an existing output" quantize "$work/truncated.safetensors" \
    -o "$work/keep.safetensors" --type int8
if cmp -s "$work/t_int8.safetensors" "$work/keep.safetensors"; then ok "the existing output is unchanged"; else fail "the existing output was modified"; fi
leftover=$(ls -A "$work" | grep -v -E '^(table\.npy|multi\.safetensors|ints\.npy|t_.*|word_.*|pos_.*|tok_.*|truncated.*|garbage\.safetensors|keep\.safetensors|kept.*|only\.safetensors|named\.safetensors|f64\.npy|vec\.npy|out|err|cmp|gen\.log)$' || true)
if [ -z "$leftover" ]; then ok "no temporary files left next to the outputs"; else fail "left in the output directory: $leftover"; fi

expect 1 "lookup row 200 of 200 (float .npy)" lookup "$T" 0 200 && has "$work/err" "200" "the out-of-range message names the row"
expect 1 "lookup row 200 of 200 (nf4)" lookup "$work/t_nf4.safetensors" 200 --tensor weight
expect 1 "lookup rows 0 and 1000000 (int8)" lookup "$work/t_int8.safetensors" 0 1000000 --tensor weight
if [ ! -s "$work/out" ]; then ok "a failed lookup prints no rows (not even the valid row 0)"; else fail "a failed lookup printed rows:"; show; fi
expect 1 "lookup row 200 of 200 (nested nf4)" lookup "$work/t_nf4_nested.safetensors" 200 --tensor weight
expect 1 "lookup rows 0 and 200 of 200 (blockwise8)" lookup "$work/t_blockwise8.safetensors" 0 200 --tensor weight
if [ ! -s "$work/out" ]; then ok "a failed blockwise8 lookup prints no rows"; else fail "a failed blockwise8 lookup printed rows:"; show; fi
expect 2 "lookup with a non-numeric row id" lookup "$T" abc

# ---- consolidate: a row-sharded checkpoint -> one file -------------------
mkdir -p "$work/shards"
"$PYTHON" "$here/cli_inputs.py" shards "$work/shards" > "$work/gen.log" 2>&1 || { fail "cli_inputs.py shards"; cat "$work/gen.log"; }
for c in ckpt stable; do
    if expect 0 "consolidate a $c checkpoint" consolidate "$work/shards/$c" -o "$work/shards/$c.safetensors"; then
        if "$PYTHON" "$here/cli_inputs.py" joined "$work/shards/$c.safetensors" "$work/shards/$c" > "$work/cmp" 2>&1; then
            ok "$(cat "$work/cmp")"
        else
            fail "consolidated $c: $(cat "$work/cmp")"
        fi
    fi
done
expect 0 "consolidate names the index file itself" consolidate "$work/shards/ckpt/model.safetensors.index.json" \
    -o "$work/shards/ckpt2.safetensors" && cmp -s "$work/shards/ckpt.safetensors" "$work/shards/ckpt2.safetensors" \
    && ok "the same file from the index path"
expect 0 "the consolidated table is a float table for lookup" lookup "$work/shards/ckpt.safetensors" 0 351 352 999
rows "consolidated rows equal the table" exact "$work/shards/table.npy" -
expect 1 "consolidate over an existing output without --force" consolidate "$work/shards/ckpt" -o "$work/shards/ckpt.safetensors"
has "$work/err" "--force" "the refusal names --force"
expect 1 "a checkpoint with a missing piece" consolidate "$work/shards/gap" -o "$work/shards/gap.safetensors"
has "$work/err" "expected 352" "the message names the missing rows"
expect 1 "a piece whose file name leaves the checkpoint folder" consolidate "$work/shards/escape" -o "$work/shards/escape.safetensors"
expect 1 "a quantized checkpoint" consolidate "$work/shards/quantized" -o "$work/shards/quantized.safetensors"
has "$work/err" "quantized checkpoint (nf4)" "the refusal says the checkpoint is quantized"
expect 1 "a folder with no index" consolidate "$work/shards" -o "$work/shards/none.safetensors"
if ls "$work/shards"/gap.safetensors "$work/shards"/escape.safetensors "$work/shards"/quantized.safetensors \
    "$work/shards"/none.safetensors > /dev/null 2>&1; then
    fail "a failed consolidate left an output file"
else
    ok "no failed consolidate wrote an output file"
fi

# ---- demo -----------------------------------------------------------------
mkdir -p "$work/demo"
if expect 0 "demo --quick" demo --quick --out-dir "$work/demo"; then
    has "$work/out" "nearest-neighbour cluster accuracy" "demo --quick prints the nearest-neighbour accuracy line"
    has "$work/out" "training:" "demo --quick prints the training line"
    has "$work/out" "nf4" "demo --quick reports the nf4 table"
    has "$work/out" "int8" "demo --quick reports the int8 table"
    acc=$(sed -n 's/^nearest-neighbour cluster accuracy.*: \([0-9.]*\)%.*/\1/p' "$work/out")
    if [ -n "$acc" ] && "$PYTHON" -c "import sys; sys.exit(0 if float('$acc') >= 50 else 1)"; then
        ok "demo --quick neighbour accuracy $acc% >= 50%"
    else
        fail "demo --quick neighbour accuracy '$acc' (want >= 50%)"
    fi
    if ls "$work/demo"/qembed-demo-*.safetensors > /dev/null 2>&1; then ok "demo --quick saved its files"; else fail "demo --quick saved no files"; fi
    # the LoRA stage: the moved tokens' accuracy must rise well above where it started
    moved=$(sed -n 's/.*moved tokens \([0-9.]*\)% -> \([0-9.]*\)%.*/\1 \2/p' "$work/out")
    if [ -n "$moved" ] && "$PYTHON" -c "import sys; b, a = map(float, '$moved'.split()); sys.exit(0 if a >= 80 and a >= b + 30 else 1)"; then
        ok "demo --quick LoRA stage: moved tokens' accuracy $moved (before, after)"
    else
        fail "demo --quick LoRA stage: moved tokens' accuracy '$moved' (want after >= 80% and >= before + 30)"
    fi
    if [ -s "$work/demo/qembed-demo-lora.safetensors" ]; then ok "demo --quick saved the adapter"; else fail "demo --quick saved no adapter"; fi
fi
expect 1 "demo --out-dir a missing directory" demo --quick --out-dir "$work/no/such/dir"

# ---- data safety: existing files, the input, directories, signals --------
S="$work/safety"
mkdir -p "$S"
cp "$T" "$S/in.npy"
sum() { cksum < "$1"; }
in_sum=$(sum "$S/in.npy")
expect 1 "quantize -o the input file itself is refused" quantize "$S/in.npy" -o "$S/in.npy" --type nf4 --force &&
    has "$work/err" "is the input file" "the refusal says the output is the input"
[ "$(sum "$S/in.npy")" = "$in_sum" ] && ok "the input is unchanged after -o input" || fail "the input changed after -o input"
ln "$S/in.npy" "$S/hardlink.npy"
expect 1 "quantize -o a hard link of the input is refused" quantize "$S/in.npy" -o "$S/hardlink.npy" --type nf4 --force
rm -f "$S/hardlink.npy"
expect 0 "quantize into a new file" quantize "$S/in.npy" -o "$S/out.safetensors" --type nf4
out_sum=$(sum "$S/out.safetensors")
expect 1 "quantize over an existing output without --force is refused" quantize "$S/in.npy" -o "$S/out.safetensors" --type int8 &&
    has "$work/err" "use --force" "the refusal names --force"
[ "$(sum "$S/out.safetensors")" = "$out_sum" ] && ok "the existing output is unchanged" || fail "the existing output changed without --force"
expect 0 "quantize --force replaces an existing output" quantize "$S/in.npy" -o "$S/out.safetensors" --type int8 --force
[ "$(sum "$S/out.safetensors")" != "$out_sum" ] && ok "--force wrote the new output" || fail "--force left the old output"
mkdir -p "$S/adir"
expect 1 "quantize -o a directory is refused" quantize "$S/in.npy" -o "$S/adir" --type nf4 --force &&
    has "$work/err" "is a directory" "the refusal says it is a directory"
expect 1 "quantize -o a path ending in / is refused" quantize "$S/in.npy" -o "$S/adir/" --type nf4 --force
if ls "$S" | grep -q '\.tmp-'; then fail "temporary files left in $S: $(ls "$S" | grep '\.tmp-')"; else ok "no temporary file left by the refusals"; fi

# Signals: a 245 MB table, SIGINT/SIGTERM early, mid-way and while the output
# is being written (waiting for the temporary file to appear): the old output
# stays byte-identical (or, if the command finished first, the new one is
# complete) and no temporary file is left.
"$PYTHON" -c "import numpy as np; np.save('$S/big.npy', np.random.default_rng(5).standard_normal((60000, 1024)).astype(np.float32))"
cp "$S/out.safetensors" "$S/old.safetensors"
old_sum=$(sum "$S/old.safetensors")
for sig in INT TERM; do
    for phase in early mid write; do
        cp "$S/old.safetensors" "$S/target.safetensors"
        # (a background job of a non-interactive shell starts with SIGINT
        # ignored, which the command keeps: restore the default first)
        "$PYTHON" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
            "$Q" quantize "$S/big.npy" -o "$S/target.safetensors" --type blockwise8 --force > /dev/null 2> "$work/err" &
        pid=$!
        saw_tmp=0
        case $phase in
        early) sleep 0.15 ;;
        mid) sleep 0.3 ;;
        write)
            i=0
            while kill -0 "$pid" 2> /dev/null && [ "$i" -lt 200000 ]; do
                if ls "$S" | grep -q '\.tmp-'; then saw_tmp=1; break; fi
                i=$((i + 1))
            done ;;
        esac
        kill -s "$sig" "$pid" 2> /dev/null
        wait "$pid"
        st=$?
        left=$(ls "$S" | grep '\.tmp-' || true)
        if [ -n "$left" ]; then
            fail "SIG$sig ($phase): temporary file left: $left"
        elif [ "$st" -eq 0 ]; then
            if "$Q" inspect "$S/target.safetensors" > /dev/null 2>&1; then ok "SIG$sig ($phase): finished first; the new output is complete"; else fail "SIG$sig ($phase): exit 0 but the output does not load"; fi
        elif [ "$(sum "$S/target.safetensors")" = "$old_sum" ]; then
            ok "SIG$sig ($phase$([ "$saw_tmp" -eq 1 ] && echo ', during the write')): exit $st, old output intact, no temporary file"
        else
            fail "SIG$sig ($phase): exit $st and the old output changed"
        fi
        [ "$phase" = write ] && [ "$saw_tmp" -eq 0 ] && [ "$st" -ne 0 ] && echo "note   SIG$sig: the write phase was not caught this time"
    done
done
rm -f "$S/big.npy"

echo "($(($(date +%s) - t0)) s)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
