#!/usr/bin/python3
"""same-weights.py A B: exit 0 when two final weight files hold bit-identical values, 1 otherwise.

HDF5 files (the real trainer's final.h5) are compared dataset by dataset: the same dataset paths, and for
each the same dtype, shape and raw bytes (attributes are not compared: they may hold wall-clock times, and
HDF5 object headers hold modification times, so `cmp` of two equal-weight files can fail). Other files
(the stand-in's text final.h5) are compared byte for byte. Uses Debian's /usr/bin/python3 with python3-h5py.
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


def main(a, b):
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
    for name in sorted(set(da) & set(db)):
        if da[name] != db[name]:
            print(f"same-weights: dataset {name} differs ({da[name][0]} {da[name][1]} vs {db[name][0]} {db[name][1]})")
            bad.append(name)
    n = sum(len(v[2]) for v in da.values())
    print(f"same-weights: {len(da)} datasets, {n} bytes: {'bit-identical' if not bad else f'{len(bad)} DIFFER'}")
    return 0 if not bad and da else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: same-weights.py A B")
    sys.exit(main(sys.argv[1], sys.argv[2]))
