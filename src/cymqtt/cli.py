"""The `cymqtt` command."""
import sys


def main(argv: list[str] | None = None) -> int:
    from cymqtt import __version__
    import cymqtt._fast  # noqa: F401  (fails with one clear line when not built)

    print(f"cymqtt {__version__}: the codec is built; the broker comes next.", file=sys.stderr)
    return 0
