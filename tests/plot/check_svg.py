#!/usr/bin/env python3
"""check_svg.py FILE.svg [--main LABEL,...] [--lr LABEL,...|--no-lr] [--points N] [--gaps LABEL]

Checks a `lockstep plot` SVG as a reader of the file would: it must be well-formed XML with an <svg> root;
each panel's curves are <path class="series" data-panel="metrics|learning-rate" data-label="...">, one per
expected label and no other, each drawn (a non-empty d), with N points when --points is given; the
legend of that panel shows every label once. --gaps LABEL: that curve is broken (two or more subpaths).
Exit 0 when all holds; otherwise prints what differs and exits 1."""
import sys
import xml.etree.ElementTree as ET

NS = "{http://www.w3.org/2000/svg}"


def main(argv):
    path, opts = argv[1], argv[2:]
    want = {"metrics": None, "learning-rate": None}
    points, gaps = None, []
    i = 0
    while i < len(opts):
        o = opts[i]
        if o == "--main":
            want["metrics"] = [s for s in opts[i + 1].split(",") if s]; i += 2
        elif o == "--lr":
            want["learning-rate"] = [s for s in opts[i + 1].split(",") if s]; i += 2
        elif o == "--no-lr":
            want["learning-rate"] = []; i += 1
        elif o == "--points":
            points = int(opts[i + 1]); i += 2
        elif o == "--gaps":
            gaps.append(opts[i + 1]); i += 2
        else:
            sys.exit(f"check_svg.py: unknown option {o}")
    errors = []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        print(f"{path}: not well-formed XML: {e}")
        return 1
    if root.tag != NS + "svg":
        errors.append(f"root element is {root.tag}, not svg")
    for attr in ("width", "height", "viewBox"):
        if attr not in root.attrib:
            errors.append(f"<svg> has no {attr}")
    series = [p for p in root.iter(NS + "path") if p.get("class") == "series"]
    for panel, labels in want.items():
        got = [p.get("data-label") for p in series if p.get("data-panel") == panel]
        legend = [t.text for g in root.iter(NS + "g")
                  if g.get("class") == "legend" and g.get("data-panel") == panel
                  for t in g.iter(NS + "text")]
        print(f"{panel}: {len(got)} curves: {', '.join(got)}")
        if labels is None:
            continue
        if sorted(got) != sorted(labels):
            errors.append(f"{panel}: curves {got}, expected {labels}")
        if labels and sorted(legend) != sorted(labels):
            errors.append(f"{panel}: legend labels {legend}, expected {labels}")
        if not labels and panel == "learning-rate" and any(
                g.get("id") == "learning-rate" for g in root.iter(NS + "g")):
            errors.append("a learning-rate panel, though the rate never changes")
    for p in series:
        d = (p.get("d") or "").split()
        label = p.get("data-label")
        if not d:
            errors.append(f"curve {label}: empty")
            continue
        if not d[0].startswith("M"):
            errors.append(f"curve {label}: path does not start with M: {d[:2]}")
        for step in d:
            x, _, y = step[1:].partition(",")
            try:
                float(x), float(y)
            except ValueError:
                errors.append(f"curve {label}: bad point {step!r}")
                break
        moves = sum(s.startswith("M") for s in d)
        if points is not None and label not in gaps and len(d) != points:
            errors.append(f"curve {label}: {len(d)} points, expected {points}")
        if label in gaps and moves < 2:
            errors.append(f"curve {label}: expected a gap (2+ subpaths), got {moves}")
        if label not in gaps and moves != 1:
            errors.append(f"curve {label}: {moves} subpaths, expected 1")
    for e in errors:
        print(f"{path}: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
