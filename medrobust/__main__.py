from medrobust.cli import main

if __name__ == "__main__":  # not when a spawned child re-imports this module
    raise SystemExit(main())
