#!/usr/bin/python3
"""Do the tests fail when the code they guard is wrong? Runs the mutants of tests/mutants.json.

Each mutant changes one place of a header under include/ (a comparison, a bound, a dropped check)
and names the test sources that must catch it. For each, this copies include/ to a scratch
folder, applies the change there (the working tree is never touched), compiles the named test
sources with a doctest main against that copy, runs them, and reports:

  CAUGHT    the tests failed, as they must
  SURVIVED  the tests passed with the code wrong: a gap in the tests (or a mutant that changes
            nothing that any input can show, which then belongs out of the catalogue)
  STALE     the text to change is no longer in the file exactly once: update the catalogue

Every test set first runs unmutated and must pass. The exit status is 0 only when every mutant
is caught.

  /usr/bin/python3 scripts/mutants.py                 # all of them, two at a time
  /usr/bin/python3 scripts/mutants.py -j 1 data.pad-aligned   # the named ones
  /usr/bin/python3 scripts/mutants.py --check         # only that each still applies (a test)
"""
import argparse
import concurrent.futures
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "tests" / "mutants.json"


@functools.cache
def eigen_include():
    try:
        flags = subprocess.run(["pkg-config", "--cflags-only-I", "eigen3"], capture_output=True, text=True, check=True)
        return flags.stdout.split()[0][2:]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "/usr/include/eigen3"


def build_and_run(include, tests, work, main_object):
    """Compiles `tests` (paths under the root) against `include`; returns (built, passed, detail)."""
    exe = work / "test"
    cmd = [os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-fopenmp", "-w", f"-I{include}",
           "-isystem", eigen_include(), "-DBLOCKDIFF_HAVE_CBLAS",
           f'-DBLOCKDIFF_TEST_DATA="{ROOT / "tests" / "data"}"',
           *[str(ROOT / t) for t in tests], str(main_object), "-o", str(exe),
           "-lpcre2-8", "-lutf8proc", "-lopenblas", "-lgomp"]
    built = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if built.returncode != 0:
        errors = [line for line in built.stderr.splitlines() if "error:" in line]
        return False, False, errors[:1] or built.stderr.strip().splitlines()[-1:] or ["(no message)"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    try:
        ran = subprocess.run([str(exe)], capture_output=True, text=True, errors="replace", env=env, cwd=work, timeout=300)
    except subprocess.TimeoutExpired:
        return True, False, ["the tests ran past 5 minutes"]  # a hang fails as surely as a check
    failures = [line for line in ran.stdout.splitlines() if "ERROR:" in line]
    return True, ran.returncode == 0, failures[:1]


def staleness(m):
    """Why mutant `m` no longer applies to the tree, or None."""
    missing = [p for p in [m["file"], *m["tests"]] if not (ROOT / p).is_file()]
    if missing:
        return "no file " + ", ".join(missing)
    count = (ROOT / m["file"]).read_text().count(m["old"])
    return None if count == 1 else f'the text to change occurs {count} times in {m["file"]}'


def run_mutant(m, main_object):
    """The verdict on mutant `m`, and what explains it."""
    stale = staleness(m)
    if stale:
        return "STALE", stale
    text = (ROOT / m["file"]).read_text()
    with tempfile.TemporaryDirectory(prefix="mutant-") as scratch:
        work = pathlib.Path(scratch)
        include = work / "include"
        shutil.copytree(ROOT / "include", include)
        (include / pathlib.Path(m["file"]).relative_to("include")).write_text(text.replace(m["old"], m["new"]))
        built, passed, detail = build_and_run(include, m["tests"], work, main_object)
    if not built:
        return "BROKEN", "the mutant does not compile: " + " ".join(detail)
    return "SURVIVED" if passed else "CAUGHT", " ".join(detail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutants to run (default: every one)")
    parser.add_argument("-j", type=int, default=2, help="mutants compiled at once")
    parser.add_argument("--check", action="store_true", help="only check that every mutant still applies")
    args = parser.parse_args()
    mutants = json.loads(CATALOGUE.read_text())
    ids = [m["id"] for m in mutants]
    if len(set(ids)) != len(ids):
        sys.exit("tests/mutants.json: ids repeat: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1})))
    if args.ids:
        unknown = set(args.ids) - {m["id"] for m in mutants}
        if unknown:
            sys.exit(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m["id"] in args.ids]
    if args.check:
        stale = [(m["id"], why) for m in mutants if (why := staleness(m))]
        for mid, why in stale:
            print(f"STALE     {mid}: {why}")
        print(f"{len(mutants) - len(stale)} of {len(mutants)} mutants apply to the tree")
        return 1 if stale else 0

    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        work = pathlib.Path(scratch)
        main_object = work / "doctest_main.o"
        subprocess.run([os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-c",
                        str(ROOT / "tests" / "support" / "doctest_main.cpp"), "-o", str(main_object)], check=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
            # The unmutated tests must pass, or no verdict below means anything.
            test_sets = sorted({tuple(m["tests"]) for m in mutants})

            def baseline(k):
                base = work / f"base-{k}"
                base.mkdir()
                return build_and_run(ROOT / "include", test_sets[k], base, main_object)

            for tests, (built, passed, detail) in zip(test_sets, pool.map(baseline, range(len(test_sets)))):
                if not (built and passed):
                    sys.exit(f"the unmutated tests {' '.join(tests)} fail: {' '.join(detail)}")
            verdicts = []
            for m, (verdict, detail) in zip(mutants, pool.map(lambda m: run_mutant(m, main_object), mutants)):
                why = f"\n          {detail}" if verdict != "CAUGHT" else ""
                print(f"{verdict:8}  {m['id']:24} {m['what']}{why}", flush=True)
                verdicts.append(verdict)
    caught = verdicts.count("CAUGHT")
    print(f"{caught} of {len(verdicts)} mutants caught")
    return 0 if caught == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
