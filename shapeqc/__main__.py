"""`python -m shapeqc ...` runs the command line."""

from shapeqc.cli import main

raise SystemExit(main())
