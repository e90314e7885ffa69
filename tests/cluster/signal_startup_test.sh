#!/usr/bin/env bash
# A warning signal at any moment after launch ends `lockstep train` with status 75 (never 138, the
# default action's death): SIGUSR1 is sent at 20 points from 1 ms to 2 s after launch, through start-up
# (the OMP_WAIT_POLICY re-execution, reading the run file, loading data) and into training. A run
# stopped after training began has written a checkpoint, and `--resume auto` then finishes it.
#   bash signal_startup_test.sh PATH/TO/lockstep
set -uo pipefail
lockstep=${1:?usage: signal_startup_test.sh PATH/TO/lockstep}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-signal-startup.XXXXXX")
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
TINY_LIMIT=2048 TINY_EPOCHS=200 bash "$here/make-tiny-run.sh" "$lockstep" "$work" "$work/run.yaml" >/dev/null || exit 1
# Popen returns once the exec has happened (its close-on-exec error pipe), so each delay counts from
# the moment lockstep runs, not from a shell's fork (a signal to the forked shell would kill the shell).
read -r pass fail trained < <(/usr/bin/python3 - "$lockstep" "$work" <<'PY'
import glob, os, signal, subprocess, sys, time
lockstep, work = sys.argv[1], sys.argv[2]
delays = [0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.018, 0.027, 0.04, 0.06, 0.09, 0.13, 0.2, 0.3, 0.45,
          0.65, 0.9, 1.2, 1.6, 2.0]
passed = failed = trained = 0
for d in delays:
    run_dir, out = f"{work}/run-{d}", f"{work}/out-{d}"
    with open(out, "w") as f:
        p = subprocess.Popen([lockstep, "train", f"{work}/run.yaml", "--run-dir", run_dir, "--set", "train.verbose=2"],
                             stdout=f, stderr=subprocess.STDOUT)
        time.sleep(d)
        p.send_signal(signal.SIGUSR1)
        rc = p.wait()
    text = open(out).read()
    if rc != 75:
        print(f"FAIL: SIGUSR1 {d}s after launch: exit {rc} (expected 75)", file=sys.stderr)
        print("".join("  | " + l for l in text.splitlines(True)[-5:]), file=sys.stderr)
        failed += 1
        continue
    if "Epoch 1/" in text:  # training had begun: a checkpoint holds the step it stopped at
        trained += 1
        if not glob.glob(f"{run_dir}/checkpoints/ckpt-*.h5"):
            print(f"FAIL: SIGUSR1 {d}s after launch: stopped in training without a checkpoint", file=sys.stderr)
            failed += 1
            continue
    passed += 1
print(passed, failed, trained)
PY
)
echo "stopped with a checkpoint (training had begun) at $trained of 20 points"
# The last stop (2 s, in training) resumes and finishes.
if "$lockstep" train "$work/run.yaml" --run-dir "$work/run-2.0" --resume auto --set train.epochs=1 --set train.verbose=0 \
     > "$work/resume.out" 2>&1; then
  echo "ok: --resume auto after the 2 s stop finished"; pass=$((pass + 1))
else
  echo "FAIL: --resume auto after the 2 s stop: exit $?"; sed 's/^/  | /' "$work/resume.out" | tail -5; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
