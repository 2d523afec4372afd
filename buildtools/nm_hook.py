"""Write the NetworkManager dispatcher hook a distribution package ships (build time, not installed).

    python -m buildtools.nm_hook --out DIR [--ikectl /usr/bin/ikectl] [--config /etc/ikectl/ikectl.toml]

writes DIR/dispatcher.d/10-ikectl and DIR/dispatcher.d/pre-up.d/10-ikectl, the same script `ikectl
install-nm-hook` writes into /etc, calling the packaged ikectl. NetworkManager's dispatcher reads
/usr/lib/NetworkManager/dispatcher.d as well as /etc (a script of the same name in /etc wins).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ikectl import nm


def write_hook(out: Path, ikectl: Path, config_path: Path) -> list[Path]:
    text = nm.hook_script(ikectl, config_path, installed_by=nm.INSTALLED_BY_PACKAGE)
    written = []
    for path in nm.hook_paths(out):
        target = out / path.relative_to(out / "etc/NetworkManager")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(0o755)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m buildtools.nm_hook", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ikectl", type=Path, default=Path("/usr/bin/ikectl"))
    parser.add_argument("--config", type=Path, default=Path("/etc/ikectl/ikectl.toml"))
    args = parser.parse_args(argv)
    for path in write_hook(args.out, args.ikectl, args.config):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
