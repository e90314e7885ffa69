"""The key=value lines the benchmarks print (train_step_bench, the PyTorch peers, the sgemm and
capacity probes) as rows, and medians over them: shared by run_train_bench.sh and run_dist_bench.sh."""
import os
import re
import statistics


def parse(path):
    """One dict per line with key=value fields; [] when the file does not exist."""
    if not os.path.exists(path):
        return []
    rows = (dict(re.findall(r"(\w+)=([^\s]+)", line)) for line in open(path))
    return [kv for kv in rows if kv]


def med(rows, key="samples_per_sec", **want):
    """Median of `key` over the rows whose fields equal `want` (compared as strings); None if none."""
    v = [float(r[key]) for r in rows if key in r and all(str(r.get(k)) == str(x) for k, x in want.items())]
    return statistics.median(v) if v else None
