"""Write a key folder for `client.key_dir`: one key file per node, mode 0600.

    python -m fedisguise.disguise.keygen --out keys/ --clients 4

Prints the paths it wrote, never a key. Existing key files are left alone (an error).
"""

from __future__ import annotations

import argparse
import sys

from fedisguise.disguise.keys import write_key_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the key folder (created 0700)")
    parser.add_argument("--clients", type=int, required=True,
                        help="experiment.clients: writes client-0.key … client-<N-1>.key")
    args = parser.parse_args(argv)
    try:
        paths = write_key_dir(args.out, args.clients)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
