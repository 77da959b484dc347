"""Stand-in for nixos-version: the release of the current system ("25.05.… (Warbler)")."""

import json
import sys

import common

with open(f"{common.CURRENT_SYSTEM}/nixos-version") as file:
    version = file.read().strip()
if "--json" in sys.argv:
    print(
        json.dumps(
            {
                "nixosVersion": version.split()[0],
                "nixpkgsRevision": version.split()[0].split(".")[-1],
            }
        )
    )
else:
    print(version)
