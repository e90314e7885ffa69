#!/usr/bin/python3
"""same-weights.py [--rtol R] A B: exit 0 when two final weight files hold bit-identical values (or, with
--rtol, values within R of each other, below), 1 otherwise.

HDF5 files (the real trainer's final.h5) are compared dataset by dataset: the same dataset paths, and for
each the same dtype, shape and raw bytes (attributes are not compared: they may hold wall-clock times, and
HDF5 object headers hold modification times, so `cmp` of two equal-weight files can fail). Other files
(the stand-in's text final.h5) are compared byte for byte. Uses Debian's /usr/bin/python3 with python3-h5py.

--rtol R: floating-point datasets pass when every element a of A and b of B has |a - b| <= R * (|b| + m),
m the largest |b| of that dataset (relative to the element, with the dataset's scale as the floor, so
weights near zero do not need relative agreement); the largest difference found, relative to m, is printed.
Other datasets (integers: step counters) must still be equal. For runs whose sums were taken in another
order: a one-process run against several ranks, where float addition is not associative.
"""
import sys


def is_hdf5(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


def datasets(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                raw = data.tobytes() if hasattr(data, "tobytes") else bytes(str(data), "utf-8")
                out[name] = (str(obj.dtype), obj.shape, raw)
        f.visititems(visit)
    return out


def close(x, y, rtol):
    """(ok, largest |x - y| relative to the dataset's largest |y|) for two equal-shape raw datasets."""
    import numpy as np
    (tx, sx, rx), (ty, sy, ry) = x, y
    if tx != ty or sx != sy:
        return False, float("inf")
    dt = np.dtype(tx)
    if dt.kind != "f":
        return rx == ry, 0.0 if rx == ry else float("inf")
    u = np.frombuffer(rx, dtype=dt).astype(np.float64)
    v = np.frombuffer(ry, dtype=dt).astype(np.float64)
    if u.size == 0:
        return True, 0.0
    m = float(np.max(np.abs(v)))
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        return False, float("inf")
    d = np.abs(u - v)
    ok = bool(np.all(d <= rtol * (np.abs(v) + m)))
    return ok, float(np.max(d)) / m if m > 0 else float(np.max(d))


def main(a, b, rtol=None):
    if is_hdf5(a) != is_hdf5(b):
        print(f"same-weights: {a} and {b} are not both HDF5")
        return 1
    if not is_hdf5(a):
        same = open(a, "rb").read() == open(b, "rb").read()
        print(f"same-weights: {a} and {b} are {'byte-identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    da, db = datasets(a), datasets(b)
    bad = sorted(set(da) ^ set(db))
    for name in bad:
        print(f"same-weights: dataset {name} is in only one of the files")
    worst = 0.0
    for name in sorted(set(da) & set(db)):
        if rtol is not None:
            ok, rel = close(da[name], db[name], rtol)
            worst = max(worst, rel)
            if not ok:
                print(f"same-weights: dataset {name} differs beyond rtol {rtol} (largest difference {rel:.3g}"
                      f" of the dataset's largest value; {da[name][0]} {da[name][1]} vs {db[name][0]} {db[name][1]})")
                bad.append(name)
        elif da[name] != db[name]:
            print(f"same-weights: dataset {name} differs ({da[name][0]} {da[name][1]} vs {db[name][0]} {db[name][1]})")
            bad.append(name)
    n = sum(len(v[2]) for v in da.values())
    if rtol is None:
        verdict = "bit-identical" if not bad else f"{len(bad)} DIFFER"
    else:
        same = all(da[k][2] == db[k][2] for k in set(da) & set(db))
        verdict = (f"{len(bad)} DIFFER" if bad else "bit-identical" if same else
                   f"within rtol {rtol} (largest difference {worst:.3g} of a dataset's largest value)")
    print(f"same-weights: {len(da)} datasets, {n} bytes: {verdict}")
    return 0 if not bad and da else 1


if __name__ == "__main__":
    args, rtol = sys.argv[1:], None
    if len(args) == 4 and args[0] == "--rtol":
        rtol, args = float(args[1]), args[2:]
    if len(args) != 2 or (rtol is not None and not rtol >= 0):
        sys.exit("usage: same-weights.py [--rtol R] A B")
    sys.exit(main(args[0], args[1], rtol))
