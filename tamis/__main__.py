"""``python -m tamis`` and the ``tamis`` command: the dependency check, then the command line."""


def main() -> None:
    from .dependencies import exit_if_unsupported

    exit_if_unsupported()
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
