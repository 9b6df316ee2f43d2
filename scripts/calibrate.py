"""The cycle model against published cycle counts: each case of configs/calibration/, emulated
next to published, with the error; optionally fits estimated figures to the fitting set.

    python scripts/calibrate.py                       # the table, lpu-v1
    python scripts/calibrate.py --fit mxm_pass_overhead,vxm_latency --write

--fit takes estimated figures only (marked `estimate` in the config) and fits them by least
squares to the cases of the files whose role is "fit"; files whose role is "check" are never
fitted to. --write puts the fitted values back into the hardware file with
source = "fit: <calibration files> ..." and the residual.
"""

import argparse
import sys

from lpu_jax.errors import UserError
from lpu_jax.lpu import calibration
from lpu_jax.lpu.hardware import load_hardware
from lpu_jax.textfiles import shipped_or_path


def print_table(calibrator, hardware) -> bool:
    print(f"{'set':18s} {'role':5s} {'case':42s} {'published':>9s} {'emulated':>9s} "
          f"{'error':>7s}  within")
    ok = True
    for row in calibrator.table(hardware):
        ok &= row["within"]
        print(f"{row['set']:18s} {row['role']:5s} {row['case']:42s} {row['published']:9,d} "
              f"{row['emulated']:9,d} {row['error']:+7.1%}  "
              f"{'yes' if row['within'] else 'NO'} (±{row['tolerance']:.0%})")
    for role in calibration.ROLES:
        print(f"rms relative error, {role} cases: {calibrator.residual(hardware, role):.1%}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hardware", default="lpu-v1")
    parser.add_argument("--sets", default=",".join(calibration.available()),
                        help="calibration files (names or .toml paths), comma-separated")
    parser.add_argument("--fit", default="", help="estimated figures to fit, comma-separated")
    parser.add_argument("--write", action="store_true", help="write fitted values back")
    args = parser.parse_args()
    hardware = load_hardware(args.hardware)
    sets = [calibration.load(name) for name in args.sets.split(",") if name]
    calibrator = calibration.Calibrator(sets)
    names = [n for n in args.fit.split(",") if n]
    if names:
        fitting = [s.name for s in sets if s.role == "fit"]
        before = calibrator.residual(hardware)
        source_note = f"fit: {', '.join(f'configs/calibration/{n}.toml' for n in fitting)}"
        fitted, residual = calibrator.fit(hardware, names, source_note)
        note = f"{source_note} (rms relative error {before:.1%} -> {residual:.1%})"
        for name in names:
            print(f"{name}: {hardware[name]:g} -> {fitted[name]:g}")
        print(note)
        hardware = fitted.with_values({n: fitted[n] for n in names}, note)
        if args.write:
            path = shipped_or_path("hardware", args.hardware, "hardware")
            calibration.write_figures(path, {n: fitted[n] for n in names}, note)
            print(f"wrote {path}")
    return 0 if print_table(calibrator, hardware) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"calibrate.py: {e}", file=sys.stderr)
        sys.exit(2)
