#!/usr/bin/env python3
"""The documentation's commands, run; its links, followed (CTest label `docs`).

    check_docs.py commands --lockstep BUILD/launch/lockstep --build-dir BUILD [--root SRC] [--keep]
    check_docs.py links [--root SRC]

Files: README.md and docs/*.md, in that order (docs/ alphabetically). Only the standard library.

`commands`: every fenced block whose info string is `sh` (or `bash`, `shell`) is split into commands:
lines joined at a trailing backslash, `# comments` dropped, a line split at `&&` and `;` outside quotes
and `$(...)`. The commands run in document order, all in one scratch checkout, so a later block may use
what an earlier one made (the README's quick start converts the data the docs' examples train on):

    SCRATCH/checkout/                 the working directory of every command (`cd` lasts to the block's end)
      build/launch/lockstep           -> the built binary (so `./build/launch/lockstep` resolves)
      launch/configs/                 a copy of the source tree's run files (their ../../runs/ stays in SCRATCH)
      runs/                           empty at the start
    SCRATCH/shared                    -> the real ../shared (so `../shared/datasets/...` resolves)
    SCRATCH/bin/lockstep              -> the built binary, first on PATH (so `lockstep` resolves)
    HOME=SCRATCH/home                 (so `~/data/...` stays in SCRATCH)

Each command is classified by its program (after leading NAME=VALUE assignments) and either RUN (a
subprocess `bash -c COMMAND` in the scratch checkout, which must exit 0 within 180 s) or CHECKED (never
run; what it names must exist and parse). A command no rule below covers fails the test: add a rule
here or write the documentation's command differently.

  lockstep VERB ...            (`lockstep`, `./build/launch/lockstep` or `build/launch/lockstep`)
      always:  every `--flag` used must be listed by `lockstep VERB --help` (`lockstep data CMD --help`).
      train, lr-find:  RUN, shortened: `--set train.epochs=1 --set data.limit=N` appended, N = 512 or the
               run file's own smaller `limit:`, and `--set data.pairs.per_epoch=512` when the run file
               draws pairs (`pairs:`).
      scale-estimate:  RUN, shortened: `--measure-sec 0.1` appended unless the command gives one (it times
               real training steps for that long per batch size).
      evaluate, predict, summary, plot, data convert, data inspect:  RUN as written, except that a
               `data convert --format cifar10` whose --src was staged by a CHECKED fetch (below) gets
               `--partial` (../shared holds only a partial CIFAR-10).
      data fetch NAME --dir DIR:  downloading is not for a test. With `--mirror file://...` it is RUN as
               written. Without a mirror, when ../shared/datasets/NAME holds NAME's official files
               (fashion-mnist, mnist), it is RUN with `--mirror file://.../shared/datasets/NAME/` appended:
               the copy and the MD5 checks are real, only the server is local. Otherwise (cifar10) it is
               CHECKED (NAME must be one `fetch --help` names) and DIR is STAGED as the fetch would leave it,
               from ../shared/datasets/cifar-10 (DIR/cifar-10-batches-bin/ with the partial batches; small
               random batches in the same format when ../shared has none).
  mpirun [OPTIONS] PROGRAM ...  RUN, bounded: `--timeout 120 --oversubscribe` put first, any `--timeout`
               of the command dropped (as root, OMPI_ALLOW_RUN_AS_ROOT[_CONFIRM]=1 are set); PROGRAM's
               own rule applies to the rest (a lockstep train is shortened as above). A benchmark binary
               as PROGRAM makes the command CHECKED as that binary.
  build/tests/.../BENCH ...    benchmark binaries (LOCKSTEP_BENCH; minutes of machine time): CHECKED: a CMake
               target BENCH is defined in the matching source folder (tests/.../CMakeLists.txt), and every
               `--flag` used appears in its sources.
  srun [OPTIONS] lockstep ...   needs Slurm: CHECKED: the lockstep command's flags as above.
  sbatch/squeue/scontrol/scancel ...  need Slurm: CHECKED: each file named exists and `bash -n` parses it.
  bash SCRIPT [ARGS]           CHECKED, never run (they install packages, build, or run for minutes): SCRIPT
               exists and `bash -n` parses it; each NAME=VALUE before it is a variable SCRIPT reads. For
               launch/quickstart.sh the ARGS must be `lockstep train` flags; for tests/run they are ctest
               arguments, checked as `ctest` below. (launch/install-deps.sh, tests/bench/*.sh, cluster/*.sh,
               tests/cluster/*.sh are all covered by this rule.)
  cmake -S SRC -B BUILD -DNAME=VALUE...   CHECKED: SRC/CMakeLists.txt exists; each NAME is a CMAKE_ variable or
               an option()/CACHE variable of the project's CMakeLists.txt files.
  cmake --build BUILD [--target T...]     CHECKED: each T is an add_executable/add_library/add_custom_target.
  ctest ...                    RUN in list mode: `ctest --test-dir BUILD -N ARGS` in the build that made the
               lockstep under test (the command's own --test-dir dropped); it must list at least one test,
               or, in a build where GoogleTest cases are not discovered yet (their executable unbuilt),
               every -L/-LE label must be one a tests/ CMakeLists.txt declares.
  export NAME=VALUE...         RUN by bash in the scratch checkout; the variables stay set for what follows.
  cd DIR, mkdir, ls, cat, echo, head, tail, realpath:  RUN as written.
  apt-get install PKG..., sudo apt-get ...:  CHECKED: each PKG is one of launch/install-deps.sh's packages.

Blocks that are not commands are checked where a comment right before them says how (invisible on GitHub):
  <!-- docs-test: output of `COMMAND` -->  the block is COMMAND's output (COMMAND classified and run as
               above): its lines, blank lines and trailing blanks aside, must be the output's lines in
               order; a line `...` stands for any number of lines.
  <!-- docs-test: same as `PATH` -->       the block is the source tree's file PATH, comment lines aside.
  <!-- docs-test: run file -->            the block is a complete run file: `lockstep train` trains it (shortened
               as above) on the Fashion-MNIST file the README's quick start converts (data.path replaced).

`links`: every relative link `[text](path#anchor)` of those files (outside code) must name an existing
file or folder, and an anchor must be a heading of the target (GitHub's slugs); every docs/*.md must be
linked from README.md.

Exit status: 0 pass, 1 failure, 77 (CTest: skipped) when ../shared/datasets/fashion-mnist or mnist is absent
(`commands` only: the README's quick start converts them).
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

RUN_TIMEOUT_S = 180
TRAIN_LIMIT = 512
MPIRUN_TIMEOUT_S = 120


# ---- markdown ------------------------------------------------------------------------------------
def doc_files(root):
    files = [os.path.join(root, "README.md")]
    d = os.path.join(root, "docs")
    if os.path.isdir(d):
        files += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".md"))
    return files


FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(output of|same as)\s*`([^`]+)`\s*-->\s*$|^<!--\s*docs-test:\s*(run file)\s*-->\s*$")


def blocks(path):
    """Yields (info, first_line_no, lines, marker_command) for each fenced block."""
    lines = open(path, encoding="utf-8").read().split("\n")
    i, pending_marker = 0, None
    while i < len(lines):
        m = FENCE.match(lines[i])
        mk = MARKER.match(lines[i].strip())
        if mk:
            pending_marker = (mk.group(1), mk.group(2)) if mk.group(1) else (mk.group(3), None)
        elif m:
            fence, info = m.group(1), m.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].lstrip().startswith(fence):
                j += 1
            yield info, i + 2, lines[i + 1:j], pending_marker
            pending_marker = None
            i = j
        elif lines[i].strip():
            pending_marker = None
        i += 1


def prose_lines(path):
    """(line_no, text) outside fenced blocks, inline code removed."""
    infence = None
    for n, l in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        m = FENCE.match(l)
        if infence:
            if l.lstrip().startswith(infence):
                infence = None
            continue
        if m:
            infence = m.group(1)
            continue
        yield n, re.sub(r"`[^`]*`", "``", l)


def slug(heading):
    s = heading.strip().lower().replace("`", "")
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s)
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    infence = None
    for l in open(path, encoding="utf-8").read().split("\n"):
        m = FENCE.match(l)
        if infence:
            if l.lstrip().startswith(infence):
                infence = None
            continue
        if m:
            infence = m.group(1)
            continue
        h = re.match(r"^#{1,6} +(.*?)\s*#*\s*$", l)
        if h:
            s = slug(h.group(1))
            k = seen.get(s, 0)
            seen[s] = k + 1
            out.add(s if k == 0 else f"{s}-{k}")
    return out


def check_links(root):
    errors, count = [], 0
    files = doc_files(root)
    readme_targets = set()
    for f in files:
        base = os.path.dirname(f)
        for n, text in prose_lines(f):
            for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
                target = m.group(1)
                if re.match(r"^[a-z]+:", target):
                    continue
                count += 1
                path, _, anchor = target.partition("#")
                full = os.path.normpath(os.path.join(base, path)) if path else f
                where = f"{os.path.relpath(f, root)}:{n}"
                if not os.path.exists(full):
                    errors.append(f"{where}: link to {target}: {os.path.relpath(full, root)} does not exist")
                    continue
                if f.endswith("README.md") and os.path.dirname(f) == root:
                    readme_targets.add(full)
                if anchor:
                    if not full.endswith(".md") or os.path.isdir(full):
                        errors.append(f"{where}: link to {target}: an anchor into a file that is not markdown")
                    elif anchor not in anchors(full):
                        near = sorted(anchors(full), key=lambda a: -len(os.path.commonprefix([a, anchor])))[:3]
                        errors.append(f"{where}: link to {target}: no heading '#{anchor}' in "
                                      f"{os.path.relpath(full, root)} (nearest: {', '.join(near)})")
    for f in files[1:]:
        if f not in readme_targets:
            errors.append(f"README.md: does not link {os.path.relpath(f, root)}")
    return errors, count


# ---- shell text ----------------------------------------------------------------------------------
def logical_lines(lines, first_no):
    """Joins backslash continuations; yields (line_no, text without comment)."""
    buf, start = "", None
    for k, l in enumerate(lines):
        if start is None:
            start = first_no + k
        if l.rstrip().endswith("\\"):
            buf += l.rstrip()[:-1] + " "
            continue
        buf += l
        text = strip_comment(buf).strip()
        if text:
            yield start, text
        buf, start = "", None


def scan(text):
    """Yields (index, char, at_top_level) outside quotes and $(...)."""
    q, depth, i = None, 0, 0
    while i < len(text):
        c = text[i]
        if q == "'":
            if c == "'":
                q = None
            yield i, c, False
        elif c == "\\":
            i += 1
        elif q == '"':
            if c == '"':
                q = None
            elif text.startswith("$(", i):
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            yield i, c, False
        else:
            if c in "'\"":
                q = c
            elif text.startswith("$(", i):
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            yield i, c, depth == 0 and q is None
        i += 1


def strip_comment(text):
    for i, c, top in scan(text):
        if top and c == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i]
    return text


def split_commands(text):
    out, last = [], 0
    it = list(scan(text))
    k = 0
    while k < len(it):
        i, c, top = it[k]
        if top and (text.startswith("&&", i) or c == ";"):
            out.append(text[last:i].strip())
            last = i + (2 if c == "&" else 1)
            if c == "&":
                k += 1
        k += 1
    out.append(text[last:].strip())
    return [s for s in out if s]


def has_redirect_or_pipe(text):
    return any(top and c in "|<>" for _, c, top in scan(text))


# ---- the project ---------------------------------------------------------------------------------
class Project:
    def __init__(self, root):
        self.root = root
        self.cmake_files = []
        for d, dirs, files in os.walk(root):
            rel = os.path.relpath(d, root)
            if rel != "." and (rel.split(os.sep)[0].startswith("build") or rel.split(os.sep)[0] in ("runs", ".git")):
                dirs[:] = []
                continue
            if "CMakeLists.txt" in files:
                self.cmake_files.append(os.path.join(d, "CMakeLists.txt"))
        self.cache_vars, self.targets = set(), {}
        for f in self.cmake_files:
            t = open(f, encoding="utf-8").read()
            self.cache_vars |= set(re.findall(r"option\(\s*(\w+)", t))
            self.cache_vars |= set(re.findall(r"set\(\s*(\w+)\s[^)]*\bCACHE\b", t))
            for m in re.finditer(r"add_(?:executable|library|custom_target)\(\s*(\w+)([^)]*)\)", t):
                srcs = []
                for s in m.group(2).split():
                    s = s.replace("${PROJECT_SOURCE_DIR}", root).replace("${CMAKE_CURRENT_SOURCE_DIR}", os.path.dirname(f))
                    p = s if os.path.isabs(s) else os.path.join(os.path.dirname(f), s)
                    if os.path.isfile(p):
                        srcs.append(p)
                self.targets[m.group(1)] = (os.path.relpath(os.path.dirname(f), root), srcs)
        self.labels = set()
        for f in self.cmake_files:
            for m in re.finditer(r"\bLABELS\s+(\"[^\"]*\"|\S+)", open(f, encoding="utf-8").read()):
                self.labels |= set(m.group(1).strip('"').split(";"))
        deps = "\n".join(strip_comment(l) for l in
                          open(os.path.join(root, "launch", "install-deps.sh"), encoding="utf-8").read().split("\n"))
        self.packages = set()
        for m in re.finditer(r"pkgs\+?=\(([^)]*)\)", deps):
            self.packages |= set(m.group(1).split())


# ---- the runner ----------------------------------------------------------------------------------
class Fail(Exception):
    pass


class Runner:
    def __init__(self, root, lockstep, build_dir, scratch):
        self.root, self.lockstep, self.build_dir, self.scratch = root, lockstep, build_dir, scratch
        self.project = Project(root)
        self.shared = os.path.normpath(os.path.join(root, "..", "shared"))
        self.checkout = os.path.join(scratch, "checkout")
        self.help_cache = {}
        self.staged_cifar = set()  # folders staged for a fetch that was not run
        os.makedirs(os.path.join(self.checkout, "build", "launch"))
        os.symlink(lockstep, os.path.join(self.checkout, "build", "launch", "lockstep"))
        shutil.copytree(os.path.join(root, "launch", "configs"), os.path.join(self.checkout, "launch", "configs"))
        os.makedirs(os.path.join(self.checkout, "runs"))
        os.symlink(self.shared, os.path.join(scratch, "shared"))
        os.makedirs(os.path.join(scratch, "bin"))
        os.symlink(lockstep, os.path.join(scratch, "bin", "lockstep"))
        os.makedirs(os.path.join(scratch, "home"))
        self.env = dict(os.environ)
        self.env["PATH"] = os.path.join(scratch, "bin") + os.pathsep + self.env.get("PATH", "")
        self.env["HOME"] = os.path.join(scratch, "home")
        self.env.pop("LOCKSTEP_DATA_MIRROR", None)
        if os.geteuid() == 0:
            self.env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        self.cwd = self.checkout

    # -- helpers
    def sh(self, cmd, timeout=RUN_TIMEOUT_S):
        try:
            p = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Fail(f"did not finish within {timeout} s")
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise Fail(f"exit status {p.returncode}\n" + "\n".join("    " + l for l in out.rstrip().split("\n")[-15:]))
        return out

    def path(self, p):
        """A path of a command, as bash in the scratch checkout would resolve it (~ is the scratch HOME)."""
        if p == "~" or p.startswith("~/"):
            p = self.env["HOME"] + p[1:]
        return os.path.normpath(os.path.join(self.cwd, p))

    def src(self, rel):
        return os.path.join(self.root, rel)

    def lockstep_help(self, words):
        key = tuple(words)
        if key not in self.help_cache:
            p = subprocess.run([self.lockstep, *words, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=self.env, timeout=60)
            text = p.stdout.decode("utf-8", "replace")
            if p.returncode != 0:
                raise Fail(f"`lockstep {' '.join(words)} --help` failed (exit {p.returncode}): no such verb?")
            self.help_cache[key] = text
        return self.help_cache[key]

    def check_lockstep_flags(self, args):
        if not args:
            raise Fail("lockstep without a verb")
        words = args[:2] if args[0] == "data" and len(args) > 1 else args[:1]
        help_text = self.lockstep_help(words)
        for a in args[len(words):]:
            if a.startswith("--"):
                flag = a.split("=", 1)[0]
                if not re.search(r"(^|[\s\[])" + re.escape(flag) + r"(?=[\s\]=]|$)", help_text, re.M):
                    raise Fail(f"`lockstep {' '.join(words)}` has no option {flag} (see its --help)")
        return words

    @staticmethod
    def is_lockstep(tok):
        return tok in ("lockstep", "./build/launch/lockstep", "build/launch/lockstep")

    def run_file_of(self, args):
        for a in args[1:]:
            if a.endswith((".yaml", ".yml")):
                p = self.path(a)
                return open(p, encoding="utf-8").read() if os.path.isfile(p) else ""
        return ""

    def lockstep_rule(self, args):
        """Returns (kind, extra_args): kind RUN or CHECK (done)."""
        words = self.check_lockstep_flags(args)
        verb = " ".join(words)
        extra = []
        if verb in ("train", "lr-find"):
            cfg = self.run_file_of(args)
            limits = [int(x) for x in re.findall(r"(?<![\w.])limit:\s*(\d+)", cfg)]
            extra += ["--set", "train.epochs=1", "--set", f"data.limit={min([TRAIN_LIMIT] + limits)}"]
            if re.search(r"(^|[\s{,])pairs:", cfg):
                extra += ["--set", f"data.pairs.per_epoch={TRAIN_LIMIT}"]
            return "RUN", extra
        if verb == "scale-estimate":
            if not any(a == "--measure-sec" or a.startswith("--measure-sec=") for a in args):
                extra += ["--measure-sec", "0.1"]
            return "RUN", extra
        if verb in ("evaluate", "predict", "summary", "plot", "data inspect"):
            return "RUN", extra
        if verb == "data convert":
            opts = dict(zip(args, args[1:]))
            src = opts.get("--src")
            if opts.get("--format") == "cifar10" and src and self.path(src) in self.staged_cifar:
                extra.append("--partial")
            return "RUN", extra
        if verb == "data fetch":
            names = re.findall(r"\(([\w, -]+)\)", self.lockstep_help(["data", "fetch"]))
            known = {n.strip() for group in names for n in group.split(",")}
            positional = [a for i, a in enumerate(args[2:], 2) if not a.startswith("-") and not args[i - 1].startswith("--")]
            name = positional[0] if positional else None
            if name not in known:
                raise Fail(f"`lockstep data fetch` knows {sorted(known)}, not {name}")
            if "--mirror" in args or any(a.startswith("--mirror=") for a in args):
                return "RUN", extra
            folder = {"fashion-mnist": "fashion-mnist", "mnist": "mnist"}.get(name)
            files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz"]
            if folder and all(os.path.isfile(os.path.join(self.shared, "datasets", folder, f)) for f in files):
                return "RUN", ["--mirror", "file://" + os.path.join(self.shared, "datasets", folder) + "/"]
            opts = dict(zip(args, args[1:]))
            dest = self.path(opts["--dir"])
            if name == "cifar10":
                c = os.path.join(self.shared, "datasets", "cifar-10")
                out = os.path.join(dest, "cifar-10-batches-bin")
                os.makedirs(out, exist_ok=True)
                pairs = (("data_batch_1.first4000.bin", "data_batch_1.bin"), ("test_batch.first1000.bin", "test_batch.bin"),
                         ("batches.meta.txt", "batches.meta.txt"))
                if all(os.path.isfile(os.path.join(c, s)) for s, _ in pairs):
                    for s, d in pairs:
                        shutil.copyfile(os.path.join(c, s), os.path.join(out, d))
                else:  # no partial copy in ../shared: small random batches in the same format
                    for d, n in (("data_batch_1.bin", 600), ("test_batch.bin", 100)):
                        with open(os.path.join(out, d), "wb") as f:
                            for i in range(n):
                                f.write(bytes([i % 10]) + os.urandom(3072))
                    with open(os.path.join(out, "batches.meta.txt"), "w") as f:
                        f.write("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
                self.staged_cifar.add(out)
                return "CHECK", "flags; staged " + os.path.relpath(out, self.scratch) + " from ../shared (partial)"
            raise Fail(f"no local copy of {name} to stand in for the download")
        raise Fail(f"no rule for `lockstep {verb}`: add one to tests/docs/check_docs.py")

    def check_bash_script(self, assigns, args):
        script = args[0]
        p = self.src(script)
        if not os.path.isfile(p):
            raise Fail(f"{script} does not exist in the source tree")
        r = subprocess.run(["bash", "-n", p], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise Fail(f"bash -n {script}: {r.stdout.decode()}")
        body = open(p, encoding="utf-8").read()
        for name in assigns:
            if not re.search(r"\b" + re.escape(name) + r"\b", body):
                raise Fail(f"{script} does not read {name}")
        if script == "launch/quickstart.sh" and args[1:]:
            self.check_lockstep_flags(["train"] + args[1:])
        if script == "tests/run":
            self.ctest_list(args[1:])
        return f"{script} exists, parses"

    def ctest_list(self, args):
        clean, skip = [], False
        for a in args:
            if skip:
                skip = False
                continue
            if a == "--test-dir":
                skip = True
                continue
            clean.append(a)
        r = subprocess.run(["ctest", "--test-dir", self.build_dir, "-N", *clean], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = r.stdout.decode("utf-8", "replace")
        m = re.search(r"Total Tests:\s*(\d+)", out)
        if r.returncode == 0 and m and int(m.group(1)) > 0:
            return f"ctest -N {' '.join(clean)}: {m.group(1)} tests"
        # GoogleTest cases are discovered when their executable is built: in a build of `lockstep` alone a
        # label may list nothing yet. Then each -L/-LE label must be declared by a tests/ CMakeLists.txt.
        labels = [b for a, b in zip(clean, clean[1:]) if a in ("-L", "-LE", "--label-regex", "--label-exclude")]
        if r.returncode == 0 and labels and all(l in self.project.labels for l in labels):
            return f"ctest -N {' '.join(clean)}: labels declared (its tests are discovered when built)"
        raise Fail(f"`ctest -N {' '.join(clean)}` lists no test:\n{out[-500:]}")

    def check_bench_binary(self, args):
        path = args[0]
        rel = path[2:] if path.startswith("./") else path
        parts = rel.split("/")
        name, folder = parts[-1], "/".join(parts[1:-1])
        if name not in self.project.targets:
            raise Fail(f"no CMake target {name} (for {path})")
        tdir, srcs = self.project.targets[name]
        if tdir != folder:
            raise Fail(f"{name} is built in BUILD/{tdir}, not BUILD/{folder}")
        text = "".join(open(s, encoding="utf-8").read() for s in srcs)
        for a in args[1:]:
            if a.startswith("--") and f'"{a.split("=")[0]}' not in text:
                raise Fail(f"{name}'s sources know no option {a}")
        return f"target {name} in {tdir}, flags known"

    def classify(self, text):
        """Returns (kind, detail, command text to run or None)."""
        toks = shlex.split(text)
        assigns = []
        while toks and re.match(r"^[A-Za-z_]\w*=", toks[0]):
            assigns.append(toks.pop(0).split("=", 1)[0])
        if not toks:
            raise Fail("an assignment alone: write `export NAME=VALUE`")
        prog, args = toks[0], toks[1:]

        def append(extra):
            if not extra:
                return text
            if has_redirect_or_pipe(text):
                raise Fail("cannot shorten a command with a redirection or a pipe")
            return text + " " + " ".join(shlex.quote(x) for x in extra)

        if self.is_lockstep(prog):
            kind, extra = self.lockstep_rule(args)
            if kind == "CHECK":
                return "CHECK", extra, None
            return "RUN", "", append(extra)
        if prog == "mpirun":
            k = next((i for i, a in enumerate(args) if self.is_lockstep(a) or a.startswith(("build/", "./build/"))), None)
            if k is None:
                raise Fail("mpirun of an unknown program")
            inner = args[k:]
            if not self.is_lockstep(inner[0]):
                return "CHECK", self.check_bench_binary(inner), None
            kind, extra = self.lockstep_rule(inner[1:])
            if kind == "CHECK":
                return "CHECK", extra, None
            m = re.search(r"\bmpirun\b", text)
            head, tail = text[:m.end()], text[m.end():]
            opt_end = tail.index(inner[0])
            opts = re.sub(r"\s--timeout[ =]\S+", "", tail[:opt_end])
            new = head + f" --timeout {MPIRUN_TIMEOUT_S} --oversubscribe" + opts + tail[opt_end:]
            text = new
            return "RUN", "bounded", append(extra)
        if prog.startswith(("build/", "./build/")) and "/tests/" in "/" + prog:
            return "CHECK", self.check_bench_binary(toks), None
        if prog == "srun":
            k = next((i for i, a in enumerate(args) if self.is_lockstep(a)), None)
            if k is None:
                raise Fail("srun of something other than lockstep")
            self.check_lockstep_flags(args[k + 1:])
            return "CHECK", "needs Slurm; lockstep flags checked", None
        if prog in ("sbatch", "squeue", "scontrol", "scancel"):
            for a in args:
                if "/" in a and not a.startswith("-"):
                    self.check_bash_script([], [a])
            return "CHECK", "needs Slurm; files named exist", None
        if prog in ("bash", "sh"):
            if not args:
                raise Fail("bash without a script")
            return "CHECK", self.check_bash_script(assigns, args), None
        if prog == "cmake":
            if "--build" in args:
                tgts, on = [], False
                for a in args:
                    if a in ("--target", "-t"):
                        on = True
                    elif a.startswith("-"):
                        on = False
                    elif on:
                        tgts.append(a)
                for t in tgts:
                    if t not in self.project.targets:
                        raise Fail(f"no CMake target {t}")
                return "CHECK", "targets exist: " + (", ".join(tgts) or "(all)"), None
            opts = dict(zip(args, args[1:]))
            if not os.path.isfile(os.path.join(self.root, os.path.normpath(opts.get("-S", ".")), "CMakeLists.txt")):
                raise Fail("-S names no CMakeLists.txt")
            for a in args:
                if a.startswith("-D"):
                    name = a[2:].split("=", 1)[0].split(":", 1)[0]
                    if not name.startswith("CMAKE_") and name not in self.project.cache_vars:
                        raise Fail(f"-D{name}: not an option of the project")
            return "CHECK", "options exist", None
        if prog == "ctest":
            return "RUN", self.ctest_list(args), None
        if prog in ("apt-get", "sudo"):
            a = args[1:] if prog == "sudo" else args
            if prog == "sudo" and (not args or args[0] != "apt-get"):
                raise Fail("sudo of something other than apt-get")
            pk = [x for x in a if not x.startswith("-") and x != "install"]
            bad = [x for x in pk if x not in self.project.packages]
            if "install" not in a or bad:
                raise Fail(f"apt-get: only `install` of launch/install-deps.sh's packages ({bad})")
            return "CHECK", "packages of install-deps.sh", None
        if prog == "export":
            out = self.sh(text + '\nenv -0', timeout=30)
            self.env = dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)
            return "RUN", "environment kept", None
        if prog == "cd":
            self.cwd = self.path(args[0] if args else "~")
            return "RUN", "", None
        if prog in ("mkdir", "ls", "cat", "echo", "head", "tail", "realpath"):
            return "RUN", "", text
        raise Fail(f"no rule for `{prog}`: add one to tests/docs/check_docs.py or change the command")

    def same_as_check(self, rel, lines):
        def meaningful(ls):
            return [l.rstrip() for l in ls if l.strip() and not l.lstrip().startswith("#")]
        want = meaningful(open(self.src(rel), encoding="utf-8").read().split("\n"))
        got = meaningful(lines)
        if got != want:
            diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise Fail(f"differs from {rel} (comments aside) at its line {diff + 1}: the doc has "
                       f"{got[diff] if diff < len(got) else '(end)'!r}, the file {want[diff] if diff < len(want) else '(end)'!r}")

    def run_file_check(self, lines):
        path = os.path.join(self.checkout, "runs", "docs-run-file.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        data = os.path.join(self.checkout, "runs", "data", "fashion-mnist.h5")
        if not os.path.isfile(data):
            raise Fail("a run file block needs runs/data/fashion-mnist.h5, which the README's quick start makes")
        self.sh(f"lockstep train {shlex.quote(path)} --run-dir runs/docs-run-file --set data.path={shlex.quote(data)} "
                f"--set train.epochs=1 --set data.limit={TRAIN_LIMIT}")

    def output_check(self, command, expected):
        kind, _, run = self.classify(command)
        if kind != "RUN" or run is None:
            raise Fail("the command of an output block must be one that runs")
        actual = [l.rstrip() for l in self.sh(run).split("\n") if l.strip()]
        want = [l.rstrip() for l in expected if l.strip()]
        k, skip = 0, False
        for w in want:
            if w.strip() == "...":
                skip = True
                continue
            if skip:
                while k < len(actual) and actual[k] != w:
                    k += 1
            if k >= len(actual) or actual[k] != w:
                got = actual[k] if k < len(actual) else "(end of output)"
                raise Fail(f"output differs: the doc says\n    {w!r}\n  the command printed\n    {got!r}")
            k, skip = k + 1, False
        if not skip and k != len(actual):
            raise Fail(f"the command printed more: {actual[k]!r}")


def run_commands(args):
    root = os.path.abspath(args.root)
    shared = os.path.normpath(os.path.join(root, "..", "shared", "datasets"))
    missing = [d for d in ("fashion-mnist", "mnist") if not os.path.isdir(os.path.join(shared, d))]
    if missing:
        print(f"SKIP: {shared}/{{{','.join(missing)}}} absent; the documentation's commands use them")
        return 77
    lockstep = os.path.abspath(args.lockstep)
    scratch = tempfile.mkdtemp(prefix="lockstep-docs.")
    t0 = time.time()
    runner = Runner(root, lockstep, os.path.abspath(args.build_dir), scratch)
    failures, counts = [], {"RUN": 0, "CHECK": 0}
    try:
        for f in doc_files(root):
            rel = os.path.relpath(f, root)
            for info, first, lines, marker in blocks(f):
                runner.cwd = runner.checkout
                if marker:
                    s = time.time()
                    what = f"{marker[0]} {marker[1] or ''}".strip()
                    try:
                        if marker[0] == "output of":
                            runner.output_check(marker[1], lines)
                        elif marker[0] == "same as":
                            runner.same_as_check(marker[1], lines)
                        else:
                            runner.run_file_check(lines)
                        print(f"  BLOCK  {rel}:{first}  {what}  ({time.time() - s:.1f} s)")
                    except (Fail, OSError) as e:
                        failures.append(f"{rel}:{first}: block ({what}): {e}")
                        print(f"FAIL   {rel}:{first}  block ({what}): {e}")
                if info not in ("sh", "bash", "shell"):
                    continue
                for n, line in logical_lines(lines, first):
                    for cmd in split_commands(line):
                        s = time.time()
                        try:
                            kind, detail, run = runner.classify(cmd)
                            if run is not None:
                                runner.sh(run)
                            counts[kind] += 1
                            note = f"  [{detail}]" if detail else ""
                            if run is not None and run != cmd:
                                note += f"\n           ran: {run}"
                            print(f"  {kind:<6} {rel}:{n}  {cmd}{note}  ({time.time() - s:.1f} s)")
                        except (Fail, ValueError, KeyError, OSError) as e:
                            failures.append(f"{rel}:{n}: `{cmd}`: {e}")
                            print(f"FAIL   {rel}:{n}  {cmd}\n  {e}")
    finally:
        if args.keep:
            print(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{counts['RUN']} command(s) run, {counts['CHECK']} checked, {len(failures)} failure(s), "
          f"{time.time() - t0:.0f} s")
    for x in failures:
        print("FAIL: " + x)
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["commands", "links"])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--lockstep")
    ap.add_argument("--build-dir")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    if args.what == "links":
        errors, count = check_links(os.path.abspath(args.root))
        for e in errors:
            print("FAIL: " + e)
        print(f"{count} relative links in README.md and docs/*.md, {len(errors)} broken")
        return 1 if errors else 0
    if not args.lockstep or not args.build_dir:
        ap.error("commands needs --lockstep and --build-dir")
    return run_commands(args)


if __name__ == "__main__":
    sys.exit(main())
